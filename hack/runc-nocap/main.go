// Command runc-nocap is an OCI runtime shim for machines whose capability bounding set is
// narrower than what a privileged container asks for (here: no CAP_SYS_RESOURCE).
//
// `docker run --privileged` (what kind does) and privileged pods (kube-proxy) ask runc for every
// capability; runc then fails with "unable to apply caps: operation not permitted" when the
// machine's own bounding set lacks one. This shim deletes, from the OCI spec runc is about to use,
// each capability the calling process's bounding set does not hold, then execs the real runc.
// It edits two files: <bundle>/config.json on `create`/`run`, and the `--process` file on `exec`.
// Everything else passes through untouched. Where the bounding set is full it changes nothing.
//
//	runc-nocap [runc flags] create --bundle DIR ...   (real runc: $SLM_REAL_RUNC, else /usr/sbin/runc, else PATH)
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// capNames lists Linux capabilities by bit number (linux/capability.h, up to 5.9+).
var capNames = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
	"CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
	"CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER",
	"CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT",
	"CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME",
	"CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL",
	"CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
	"CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
}

// missingCaps returns the names of known capabilities absent from this process's bounding set.
func missingCaps() (map[string]bool, error) {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return nil, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if !strings.HasPrefix(line, "CapBnd:") {
			continue
		}
		mask, err := strconv.ParseUint(strings.TrimSpace(strings.TrimPrefix(line, "CapBnd:")), 16, 64)
		if err != nil {
			return nil, err
		}
		missing := map[string]bool{}
		for bit, name := range capNames {
			if mask&(1<<uint(bit)) == 0 {
				missing[name] = true
			}
		}
		return missing, nil
	}
	return nil, fmt.Errorf("no CapBnd line in /proc/self/status")
}

// filterCaps removes the missing capabilities from every set of one `capabilities` object.
func filterCaps(caps map[string]any, missing map[string]bool) bool {
	changed := false
	for set, v := range caps {
		list, ok := v.([]any)
		if !ok {
			continue
		}
		kept := make([]any, 0, len(list))
		for _, c := range list {
			if s, ok := c.(string); ok && missing[s] {
				changed = true
				continue
			}
			kept = append(kept, c)
		}
		caps[set] = kept
	}
	return changed
}

// rewrite edits path in place; process says whether the file is a process (exec) or a whole spec.
func rewrite(path string, process bool, missing map[string]bool) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var doc map[string]any
	if err := json.Unmarshal(data, &doc); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	proc := doc
	if !process {
		p, ok := doc["process"].(map[string]any)
		if !ok {
			return nil
		}
		proc = p
	}
	caps, ok := proc["capabilities"].(map[string]any)
	if !ok || !filterCaps(caps, missing) {
		return nil
	}
	out, err := json.Marshal(doc)
	if err != nil {
		return err
	}
	// NB: keep the file's mode; runc and the shim read it right after we return.
	info, err := os.Stat(path)
	if err != nil {
		return err
	}
	return os.WriteFile(path, out, info.Mode().Perm())
}

// flagValue finds `--name VALUE` or `--name=VALUE` (also the short form) in args.
func flagValue(args []string, names ...string) string {
	for i, a := range args {
		for _, n := range names {
			if a == n && i+1 < len(args) {
				return args[i+1]
			}
			if strings.HasPrefix(a, n+"=") {
				return strings.TrimPrefix(a, n+"=")
			}
		}
	}
	return ""
}

// hasCommand reports whether one of the runc subcommands appears among the arguments.
func hasCommand(args []string, cmds ...string) bool {
	for _, a := range args {
		for _, c := range cmds {
			if a == c {
				return true
			}
		}
	}
	return false
}

func main() {
	args := os.Args[1:]
	if missing, err := missingCaps(); err == nil && len(missing) > 0 {
		var target string
		process := false
		switch {
		case hasCommand(args, "create", "run"):
			if b := flagValue(args, "--bundle", "-b"); b != "" {
				target = filepath.Join(b, "config.json")
			} else {
				target = "config.json"
			}
		case hasCommand(args, "exec"):
			target, process = flagValue(args, "--process", "-p"), true
		}
		if target != "" {
			if err := rewrite(target, process, missing); err != nil {
				fmt.Fprintf(os.Stderr, "runc-nocap: %v\n", err)
				os.Exit(1)
			}
		}
	}
	real := os.Getenv("SLM_REAL_RUNC")
	if real == "" {
		// Debian's runc lives in /usr/sbin, Docker CE's in /usr/bin: take the first on PATH.
		real = "/usr/sbin/runc"
		if _, err := os.Stat(real); err != nil {
			if found, err := exec.LookPath("runc"); err == nil {
				real = found
			}
		}
	}
	err := syscall.Exec(real, append([]string{real}, args...), os.Environ())
	fmt.Fprintf(os.Stderr, "runc-nocap: exec %s: %v\n", real, err)
	os.Exit(127)
}
