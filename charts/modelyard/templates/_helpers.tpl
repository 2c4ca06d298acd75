{{/*
Expand the name of the chart.
*/}}
{{- define "modelyard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
A default fully qualified app name, truncated at 63 characters (some Kubernetes name fields are limited).
When the release name already contains the chart name it is used alone.
*/}}
{{- define "modelyard.fullname" -}}
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

{{/*
Chart name and version, as used by the chart label.
*/}}
{{- define "modelyard.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels: the platform's pods carry these, and the NetworkPolicies admit exactly these.
*/}}
{{- define "modelyard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "modelyard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "modelyard.labels" -}}
helm.sh/chart: {{ include "modelyard.chart" . }}
{{ include "modelyard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: modelyard
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Labels of one component: the common labels plus app.kubernetes.io/component.
Call with (dict "ctx" $ "component" "postgresql").
*/}}
{{- define "modelyard.componentLabels" -}}
{{ include "modelyard.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Selector labels of one component. Call with (dict "ctx" $ "component" "postgresql").
*/}}
{{- define "modelyard.componentSelectorLabels" -}}
{{ include "modelyard.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
An image reference from {repository, tag, digest}: the digest wins; the tag defaults to the chart's appVersion.
Call with (dict "image" .Values.image "ctx" $).
*/}}
{{- define "modelyard.image" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion .image.tag) }}
{{- end }}
{{- end }}

{{/*
Pod-level security context that passes Pod Security "restricted". Call with the uid to run as.
*/}}
{{- define "modelyard.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ . }}
runAsGroup: {{ . }}
fsGroup: {{ . }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
Container-level security context that passes Pod Security "restricted".
*/}}
{{- define "modelyard.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* ---------------------------------------------------------------- names of shared objects */}}

{{/* The Secret holding MODELYARD_DATABASE_URL (MODELYARD_PIPELINE__DATABASE_SECRET). */}}
{{- define "modelyard.databaseSecretName" -}}
{{- if .Values.postgresql.enabled }}
{{- printf "%s-database" (include "modelyard.fullname" .) }}
{{- else }}
{{- required "externalDatabase.existingSecret is required when postgresql.enabled is false" .Values.externalDatabase.existingSecret }}
{{- end }}
{{- end }}

{{/* The key of the database URL in that Secret. */}}
{{- define "modelyard.databaseSecretKey" -}}
{{- if .Values.postgresql.enabled }}MODELYARD_DATABASE_URL{{ else }}{{ .Values.externalDatabase.urlKey }}{{ end }}
{{- end }}

{{/* The Secret holding the bundled Postgres' password (key "password"). */}}
{{- define "modelyard.postgresqlPasswordSecretName" -}}
{{- printf "%s-postgresql" (include "modelyard.fullname" .) }}
{{- end }}

{{/* The Secret holding AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (MODELYARD_PIPELINE__S3_SECRET). */}}
{{- define "modelyard.s3SecretName" -}}
{{- if .Values.seaweedfs.enabled }}
{{- printf "%s-s3" (include "modelyard.fullname" .) }}
{{- else }}
{{- required "externalS3.existingSecret is required when seaweedfs.enabled is false" .Values.externalS3.existingSecret }}
{{- end }}
{{- end }}

{{/* The ConfigMap with MODELYARD_STORE_URI, AWS_ENDPOINT_URL, AWS_REGION (MODELYARD_PIPELINE__CONFIG_MAP). */}}
{{- define "modelyard.configMapName" -}}
{{- printf "%s-config" (include "modelyard.fullname" .) }}
{{- end }}

{{- define "modelyard.postgresqlHost" -}}
{{- printf "%s-postgresql.%s.svc" (include "modelyard.fullname" .) .Release.Namespace }}
{{- end }}

{{- define "modelyard.seaweedfsHost" -}}
{{- printf "%s-seaweedfs.%s.svc" (include "modelyard.fullname" .) .Release.Namespace }}
{{- end }}

{{/* S3 endpoint URL, with its scheme. */}}
{{- define "modelyard.s3Endpoint" -}}
{{- if .Values.seaweedfs.enabled }}
{{- printf "http://%s:8333" (include "modelyard.seaweedfsHost" .) }}
{{- else }}
{{- .Values.externalS3.endpoint }}
{{- end }}
{{- end }}

{{- define "modelyard.s3Region" -}}
{{- if .Values.seaweedfs.enabled }}us-east-1{{ else }}{{ .Values.externalS3.region }}{{ end }}
{{- end }}

{{/* The object store root, MODELYARD_STORE_URI: s3://bucket[/prefix]. */}}
{{- define "modelyard.storeUri" -}}
{{- $bucket := ternary .Values.seaweedfs.bucket .Values.externalS3.bucket .Values.seaweedfs.enabled }}
{{- $prefix := ternary "" .Values.externalS3.prefix .Values.seaweedfs.enabled | trimAll "/" }}
{{- if $prefix }}
{{- printf "s3://%s/%s" $bucket $prefix }}
{{- else }}
{{- printf "s3://%s" $bucket }}
{{- end }}
{{- end }}

{{/* The ServiceAccount the predictors run as (it lists the S3 Secret for KServe's storage initializer). */}}
{{- define "modelyard.servingServiceAccountName" -}}
{{- printf "%s-serving" (include "modelyard.fullname" .) }}
{{- end }}

{{/* The labels of every predictor pod: the release's selector labels, which the NetworkPolicies admit. */}}
{{- define "modelyard.predictorLabels" -}}
{{ include "modelyard.selectorLabels" . }}
app.kubernetes.io/part-of: modelyard
{{- end }}

{{/*
MODELYARD_OPERATOR__PREDICTOR and __TRAINING: what the operator gives the predictors and training pods it
makes, from the helpers and values of the chart's own (its InferenceServices, and its training CronJobs).
*/}}
{{- define "modelyard.operatorPredictorSettings" -}}
{{- $labels := include "modelyard.predictorLabels" . | fromYaml }}
{{- $security := include "modelyard.podSecurityContext" 1000 | fromYaml }}
{{- dict "service_account" (include "modelyard.servingServiceAccountName" .) "labels" $labels "security_context" $security "resources" .Values.serving.resources | toJson }}
{{- end }}

{{- define "modelyard.operatorTrainingSettings" -}}
{{- $labels := include "modelyard.componentSelectorLabels" (dict "ctx" . "component" "training") | fromYaml }}
{{- $security := include "modelyard.podSecurityContext" 1000 | fromYaml }}
{{- $container := include "modelyard.containerSecurityContext" . | fromYaml }}
{{- dict "service_account" (printf "%s-jobs" (include "modelyard.fullname" .)) "labels" $labels "security_context" $security "container_security_context" $container "resources" .Values.pipelines.training.resources | toJson }}
{{- end }}

{{/* The ServiceAccount of the pipeline's Jobs and CronJobs: it may patch InferenceServices, nothing more. */}}
{{- define "modelyard.pipelineServiceAccountName" -}}
{{- printf "%s-pipeline" (include "modelyard.fullname" .) }}
{{- end }}

{{- define "modelyard.prometheusUrl" -}}
{{- if .Values.prometheus.enabled }}
{{- printf "http://%s-prometheus.%s.svc:9090" (include "modelyard.fullname" .) .Release.Namespace }}
{{- else }}
{{- .Values.grafana.prometheusUrl }}
{{- end }}
{{- end }}

{{/*
A model's bundle location: its storageUri, or the registry reference NAME@VERSION resolved the way
publishing lays bundles out (<store root>/<name>/<version>). Call with (dict "model" $m "ctx" $).
*/}}
{{- define "modelyard.modelStorageUri" -}}
{{- if .model.storageUri }}
{{- .model.storageUri }}
{{- else if .model.version }}
{{- printf "%s/%s/%v" (include "modelyard.storeUri" .ctx) (default .model.name .model.registryName) .model.version }}
{{- else }}
{{- fail (printf "serving.models[%s]: give storageUri or version (a registry reference)" .model.name) }}
{{- end }}
{{- end }}

{{/*
The environment every platform Job, CronJob and KFP component shares: the registry URL and S3 keys from
their Secrets, the store and pipeline settings from the ConfigMap.
*/}}
{{- define "modelyard.platformEnv" -}}
- name: MODELYARD_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "modelyard.databaseSecretName" . }}
      key: {{ include "modelyard.databaseSecretKey" . }}
{{ include "modelyard.s3KeysEnv" . }}
{{- end }}

{{/* The S3 keys, from the chart's S3 Secret (the endpoint and region come from the ConfigMap). */}}
{{- define "modelyard.s3KeysEnv" -}}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ include "modelyard.s3SecretName" . }}
      key: AWS_ACCESS_KEY_ID
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "modelyard.s3SecretName" . }}
      key: AWS_SECRET_ACCESS_KEY
{{- end }}

{{/* Scratch volumes so that read-only root filesystems still have a HOME and a /tmp. */}}
{{- define "modelyard.scratchVolumes" -}}
- name: home
  emptyDir: {}
- name: tmp
  emptyDir: {}
{{- end }}

{{- define "modelyard.scratchVolumeMounts" -}}
- name: home
  mountPath: /var/lib/modelyard
- name: tmp
  mountPath: /tmp
{{- end }}

{{/*
The predictors' scrape interval in seconds (MODELYARD_OPERATOR__SCRAPE_INTERVAL_S): the PodMonitor's when
the Prometheus Operator scrapes them, else the bundled Prometheus'. A rollout's analysis looks at least
four scrapes back.
*/}}
{{- define "modelyard.scrapeIntervalSeconds" -}}
{{- $interval := ternary .Values.prometheusOperator.podMonitor.interval .Values.prometheus.scrapeInterval .Values.prometheusOperator.podMonitor.enabled }}
{{- $unit := regexFind "(ms|s|m|h)$" $interval }}
{{- $factor := get (dict "ms" 0.001 "s" 1.0 "m" 60.0 "h" 3600.0) $unit }}
{{- mulf (regexFind "^[0-9]+" $interval | float64) $factor }}
{{- end }}
