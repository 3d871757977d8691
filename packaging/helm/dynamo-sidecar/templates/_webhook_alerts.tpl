{{- /*
Alerts on the webhook itself and on what it is for: Dynamo pods in opted-in namespaces
that run without the sidecar. The webhook's series carry the job label its PodMonitor sets.
The expressions are tested with `promtool test rules` (tests/test_helm.py) at and past
their thresholds.
*/ -}}
{{- define "dynamo-sidecar.webhookAlertRules" -}}
{{- $job := printf "job=%q, namespace=%q" (include "dynamo-sidecar.webhookJob" .) .Release.Namespace -}}
{{- $types := join "|" .Values.webhook.componentTypes -}}
{{- $days := int .Values.prometheusRule.certificateExpiryWarningDays -}}
- alert: DynamoSidecarWebhookDown
  expr: absent(up{ {{- $job -}} } == 1)
  for: 5m
  labels:
    severity: warning
    # absent() of a comparison keeps no labels: these say which webhook.
    job: {{ include "dynamo-sidecar.webhookJob" . }}
    namespace: {{ .Release.Namespace }}
  annotations:
    summary: No replica of the dynamo-sidecar webhook has been up for 5 minutes.
    description: >-
      Dynamo pods created now start without the sidecar (failurePolicy {{ .Values.webhook.failurePolicy }}).
      Check the pods of {{ include "dynamo-sidecar.fullname" . }} in {{ .Release.Namespace }} and their logs.
- alert: DynamoSidecarWebhookAdmissionErrors
  expr: >-
    sum by (namespace, outcome) (increase(dynamo_sidecar_webhook_reviews_total{ {{- $job -}}, outcome=~"error|too_large|timeout|busy"}[15m])) > 0
  labels: {severity: warning}
  annotations:
    summary: 'The webhook admitted {{`{{ $value | humanize }}`}} pods without the sidecar ({{`{{ $labels.outcome }}`}}) in the last 15 minutes.'
    description: >-
      error: a review it could not read or inject (its log line names the uid); too_large: over 4 MiB;
      timeout: the body or the work took longer than 10 s; busy: more review bytes in hand than
      its budget. Those pods run without the sidecar until they are re-created.
- alert: DynamoSidecarWebhookSlowReviews
  expr: >-
    histogram_quantile(0.99, sum by (namespace, le) (rate(dynamo_sidecar_webhook_review_duration_seconds_bucket{ {{- $job -}} }[10m]))) > {{ divf .Values.webhook.timeoutSeconds 2 }}
  for: 10m
  labels: {severity: warning}
  annotations:
    summary: 'The webhook answers 1 % of reviews in more than {{`{{ $value | humanizeDuration }}`}}, half the API server''s {{ .Values.webhook.timeoutSeconds }} s timeout.'
    description: Past the timeout the API server gives up and admits the pod without the sidecar. Look at the webhook's CPU limit and throttling, and at the size of the pods being created.
- alert: DynamoSidecarWebhookCertificateExpiring
  expr: min by (namespace) (dynamo_sidecar_webhook_certificate_expiry_timestamp_seconds{ {{- $job -}} }) - time() < {{ mul $days 86400 }}
  for: 10m
  labels: {severity: warning}
  annotations:
    summary: 'The webhook''s certificate expires in {{`{{ $value | humanizeDuration }}`}}.'
    description: With cert-manager, check the Certificate's renewal; with the chart's certificate, run helm upgrade with tls.recreate=true. The webhook reloads a renewed certificate by itself.
- alert: DynamoSidecarWebhookCertificateExpiring
  expr: min by (namespace) (dynamo_sidecar_webhook_certificate_expiry_timestamp_seconds{ {{- $job -}} }) - time() < 86400
  labels: {severity: critical}
  annotations:
    summary: 'The webhook''s certificate expires in {{`{{ $value | humanizeDuration }}`}}: after that no Dynamo pod gets the sidecar.'
- alert: DynamoSidecarWebhookCertificateNotReloaded
  expr: increase(dynamo_sidecar_webhook_certificate_reload_errors_total{ {{- $job -}} }[30m]) > 0
  labels: {severity: warning}
  annotations:
    summary: The webhook's certificate files changed but do not load (half written, or a key that does not match); it still serves the previous certificate.
    description: 'Its log line "webhook certificate not reloaded" gives the error. Pod {{`{{ $labels.pod }}`}}.'
- alert: DynamoPodWithoutSidecar
  expr: |-
    (
      max by (namespace, pod) (kube_pod_labels{label_nvidia_com_dynamo_component_type=~"{{ $types }}"})
      * on (namespace) group_left ()
      max by (namespace) (kube_namespace_labels{ {{- .Values.prometheusRule.optedInNamespaces -}} })
      * on (namespace, pod)
      max by (namespace, pod) (kube_pod_status_phase{phase="Running"} == 1)
    )
    unless on (namespace, pod) max by (namespace, pod) (kube_pod_init_container_info{container="dynamo-sidecar"})
    unless on (namespace, pod) max by (namespace, pod) (kube_pod_container_info{container="dynamo-sidecar"})
    unless on (namespace, pod) max by (namespace, pod) (kube_pod_labels{label_dynamo_sidecar_io_inject="false"})
    unless on (namespace, pod) max by (namespace, pod) (kube_pod_annotations{annotation_dynamo_sidecar_io_inject="false"})
  for: 10m
  labels: {severity: warning}
  annotations:
    summary: 'Dynamo pod {{`{{ $labels.namespace }}/{{ $labels.pod }}`}} runs without the dynamo-sidecar in a namespace opted in for it.'
    description: >-
      The webhook was down, timed out or could not read its review when the pod was created
      (see DynamoSidecarWebhookAdmissionErrors), or the pod was created before the namespace was
      labelled. Re-create the pod once the webhook is healthy. Reads kube-state-metrics, which
      must export the pod label nvidia.com/dynamo-component-type and the namespace label
      dynamo-sidecar.io/inject (--metric-labels-allowlist).
{{- end -}}
