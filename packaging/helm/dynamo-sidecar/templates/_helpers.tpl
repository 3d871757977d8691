{{- define "dynamo-sidecar.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "dynamo-sidecar.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "dynamo-sidecar.labels" -}}
app.kubernetes.io/name: {{ include "dynamo-sidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "dynamo-sidecar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dynamo-sidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: webhook
{{- end -}}

{{- define "dynamo-sidecar.image" -}}
{{- $repository := required "image.repository is required: the sidecar image you built and pushed (no image is published), e.g. --set image.repository=registry.example.com/dynamo-sidecar" .Values.image.repository -}}
{{- printf "%s:%s" $repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "dynamo-sidecar.sidecarImage" -}}
{{- default (include "dynamo-sidecar.image" .) .Values.sidecar.image -}}
{{- end -}}

{{- define "dynamo-sidecar.tlsSecret" -}}
{{- printf "%s-tls" (include "dynamo-sidecar.fullname" .) -}}
{{- end -}}

{{- define "dynamo-sidecar.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "dynamo-sidecar.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- /* The webhook's namespace selector: the values' one whole, or the opt-in label. */ -}}
{{- define "dynamo-sidecar.namespaceSelector" -}}
{{- if .Values.webhook.namespaceSelector -}}
{{- toYaml .Values.webhook.namespaceSelector -}}
{{- else -}}
matchLabels:
  dynamo-sidecar.io/inject: enabled
matchExpressions:
  - key: kubernetes.io/metadata.name
    operator: NotIn
    values: [kube-system, kube-public, kube-node-lease]
{{- end -}}
{{- end -}}

{{- define "dynamo-sidecar.webhookJob" -}}
{{- printf "%s-webhook" (include "dynamo-sidecar.fullname" .) -}}
{{- end -}}
