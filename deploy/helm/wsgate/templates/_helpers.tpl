{{/* Name of the chart, overridable. */}}
{{- define "wsgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Fully qualified app name: release-chart, or fullnameOverride. */}}
{{- define "wsgate.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "wsgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "wsgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "wsgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "wsgate.labels" -}}
helm.sh/chart: {{ include "wsgate.chart" . }}
{{ include "wsgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "wsgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "wsgate.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding jwt-secret, api-key and redis-url. */}}
{{- define "wsgate.secretName" -}}
{{- default (include "wsgate.fullname" .) .Values.secrets.existingSecret -}}
{{- end -}}

{{/*
The control API key: secrets.apiKey; else the key already in the chart's Secret (so upgrades
keep it); else a new random one. Computed once per render and remembered in .Values, so the
Secret and the Deployment's checksum annotation see the same key.
*/}}
{{- define "wsgate.apiKey" -}}
{{- if not (hasKey .Values.secrets "generatedApiKey") -}}
{{- $key := .Values.secrets.apiKey -}}
{{- if not $key -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "wsgate.fullname" .) -}}
{{- if and $existing $existing.data (hasKey $existing.data "api-key") -}}
{{- $key = index $existing.data "api-key" | b64dec -}}
{{- else -}}
{{- $key = randAlphaNum 48 -}}
{{- end -}}
{{- end -}}
{{- $_ := set .Values.secrets "generatedApiKey" $key -}}
{{- end -}}
{{- index .Values.secrets "generatedApiKey" -}}
{{- end -}}

{{/* Where the RS256 public key is mounted. */}}
{{- define "wsgate.jwtPublicKeyDir" -}}/etc/wsgate/jwt{{- end -}}

{{/* The ConfigMap holding the RS256 public key, or "" when there is none. */}}
{{- define "wsgate.jwtPublicKeyConfigMap" -}}
{{- if .Values.auth.jwtPublicKey.existingConfigMap -}}
{{- .Values.auth.jwtPublicKey.existingConfigMap -}}
{{- else if .Values.auth.jwtPublicKey.pem -}}
{{- printf "%s-jwt-public-key" (include "wsgate.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
