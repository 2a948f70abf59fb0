{{/* The name of every object of the release. */}}
{{- define "rouse.fullname" -}}
{{- if contains "rouse" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-rouse" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "rouse.labels" -}}
app.kubernetes.io/name: rouse
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
