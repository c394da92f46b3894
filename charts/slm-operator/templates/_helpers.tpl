{{/*
Names and labels shared by every template of the chart.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "slm-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every resource name: fullnameOverride, else the release name, with the chart name
appended unless the release name already contains it (release "slm-operator" -> "slm-operator").
NB: trunc 63 because the names become label values.
*/}}
{{- define "slm-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "slm-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every object of the release carries (app.kubernetes.io/* recommended labels). */}}
{{- define "slm-operator.labels" -}}
helm.sh/chart: {{ include "slm-operator.chart" . }}
{{ include "slm-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: slm-operator
{{- end }}

{{/* The immutable subset: a Deployment's selector can never change, so no version in here. */}}
{{- define "slm-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "slm-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "slm-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "slm-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "slm-operator.profilerServiceAccountName" -}}
{{- .Values.profiler.serviceAccount.name }}
{{- end }}

{{- define "slm-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "slm-operator.profilerImage" -}}
{{- printf "%s:%s" .Values.profiler.image.repository (default .Chart.AppVersion .Values.profiler.image.tag) }}
{{- end }}

{{/*
The namespaces whose SLMServices this operator serves, comma-separated, "" for all (cluster-wide
mode): operator.watchNamespaces (a list) and the comma-separated operator.watchNamespace, in that
order, without duplicates. The operator reads it as SLM_WATCH_NAMESPACE; the writer ClusterRole is
bound with one RoleBinding in each (rbac-operator.yaml).
*/}}
{{- define "slm-operator.watchNamespaces" -}}
{{- $names := list }}
{{- range .Values.operator.watchNamespaces }}
{{- $names = append $names . }}
{{- end }}
{{- range splitList "," .Values.operator.watchNamespace }}
{{- if . }}
{{- $names = append $names . }}
{{- end }}
{{- end }}
{{- join "," (uniq $names) }}
{{- end }}

{{/*
Env of the operator for the defaults of the pods it makes (operator.engineDefaults,
profiler.resources), as a YAML list: a value left empty (or null) sets nothing, so the operator's
own default holds. Whole numbers (cpu: 2, runAsUser) are written without a decimal point.
*/}}
{{- define "slm-operator.podDefaultsEnv" -}}
{{- $engine := .Values.operator.engineDefaults | default dict }}
{{- $profiler := .Values.profiler.resources | default dict }}
{{- $values := dict
  "SLM_ENGINE_CPU_REQUEST" $engine.cpu
  "SLM_ENGINE_MEMORY_REQUEST" $engine.memory
  "SLM_ENGINE_EPHEMERAL_STORAGE_REQUEST" $engine.ephemeralStorage
  "SLM_ENGINE_RUN_AS_USER" $engine.runAsUser
  "SLM_PROFILER_CPU_REQUEST" $profiler.cpu
  "SLM_PROFILER_MEMORY_REQUEST" $profiler.memory }}
{{- $env := list }}
{{- range $name, $value := $values }}
{{- if not (or (kindIs "invalid" $value) (eq (toString $value) "")) }}
{{- if kindIs "string" $value }}
{{- $env = append $env (dict "name" $name "value" $value) }}
{{- else if eq (float64 $value) (floor $value) }}
{{- $env = append $env (dict "name" $name "value" (toString (int64 $value))) }}
{{- else }}
{{- $env = append $env (dict "name" $name "value" (toString $value)) }}
{{- end }}
{{- end }}
{{- end }}
{{- if $env }}
{{- toYaml $env }}
{{- end }}
{{- end }}

{{/*
SLM_METRICS_PORT: metrics.port, or 0 (no endpoint) when metrics.enabled is false. Fails when it is
healthPort: kopf's liveness endpoint and /metrics cannot share a port.
*/}}
{{- define "slm-operator.metricsPort" -}}
{{- if .Values.metrics.enabled }}
{{- if eq (int .Values.metrics.port) (int .Values.healthPort) }}
{{- fail (printf "metrics.port and healthPort are both %v: give /metrics a port of its own" .Values.healthPort) }}
{{- end }}
{{- .Values.metrics.port }}
{{- else }}
{{- 0 }}
{{- end }}
{{- end }}

{{/* Labels of the operator's pod that a Service or monitor selects it by. */}}
{{- define "slm-operator.operatorSelectorLabels" -}}
{{ include "slm-operator.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end }}
