// Command pause is the pod sandbox's process for the locally built kind node image: it holds the
// pod's namespaces open, reaps orphans when it is the pod's PID 1, and exits on SIGINT or SIGTERM.
// Kubernetes' own pause image cannot be pulled here (no registry), so hack/kind-node builds this.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-v" {
		os.Stdout.WriteString("pause (slm-operator local build)\n")
		return
	}
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range sigs {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		// NB: with a shared PID namespace, exited children of other containers reparent to us.
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
