{{/* Full name: the release name, or "<release>-dr-syncer" when it lacks the chart name. */}}
{{- define "dr-syncer.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "dr-syncer.serviceAccountName" -}}
{{- default (include "dr-syncer.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "dr-syncer.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "dr-syncer.labels" -}}
{{ include "dr-syncer.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "dr-syncer.leaderElection" -}}
{{- if .Values.leaderElection.enabled -}}true{{- end -}}
{{- end -}}

{{/* Sharding: more than one replica and no explicit leader election. */}}
{{- define "dr-syncer.sharding" -}}
{{- if and (not .Values.leaderElection.enabled) (gt (int .Values.replicaCount) 1) -}}true{{- end -}}
{{- end -}}

{{/* The ConfigMap holding the git CA bundle ("" when none is configured). */}}
{{- define "dr-syncer.gitCaConfigMap" -}}
{{- if and .Values.git.caBundle .Values.git.caBundleConfigMap.name -}}
{{- fail "git.caBundle and git.caBundleConfigMap.name are exclusive: set one" -}}
{{- else if .Values.git.caBundle -}}
{{- printf "%s-git-ca" (include "dr-syncer.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- .Values.git.caBundleConfigMap.name -}}
{{- end -}}
{{- end -}}

{{/* The key of the bundle in that ConfigMap. */}}
{{- define "dr-syncer.gitCaKey" -}}
{{- if .Values.git.caBundle -}}ca.crt{{- else -}}{{ default "ca.crt" .Values.git.caBundleConfigMap.key }}{{- end -}}
{{- end -}}
