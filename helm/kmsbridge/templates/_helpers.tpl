{{/*
Names, labels and the pod parts every workload shares. Each template file renders one object; the
Deployments, the CronJob and the hook Job build their pods from the helpers below so the security
context, environment and mounts cannot drift between them.
*/}}

{{- define "kmsbridge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kmsbridge.fullname" -}}
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

{{- define "kmsbridge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kmsbridge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kmsbridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "kmsbridge.labels" -}}
helm.sh/chart: {{ include "kmsbridge.chart" . }}
{{ include "kmsbridge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kmsbridge
{{- end }}

{{/* Labels of one component: (dict "root" $ "component" "executor") */}}
{{- define "kmsbridge.componentLabels" -}}
{{ include "kmsbridge.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "kmsbridge.componentSelectorLabels" -}}
{{ include "kmsbridge.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "kmsbridge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kmsbridge.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kmsbridge.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Pod-level security context: values.podSecurityContext (restricted Pod Security Standard by default). */}}
{{- define "kmsbridge.podSecurityContext" -}}
{{- toYaml .Values.podSecurityContext }}
{{- end }}

{{/* Container security context: values.containerSecurityContext (restricted by default). */}}
{{- define "kmsbridge.containerSecurityContext" -}}
{{- toYaml .Values.containerSecurityContext }}
{{- end }}

{{/*
Environment of a kmsbridge container:
(dict "root" $ "component" name "kms" bool "db" bool "apiKeys" bool "pins" bool "extra" list).
Secrets come only from existing Secrets: files for the KMS token, the API keys and the PIN keys (the
settings read *_FILE), secretKeyRef for the database URL and the Kafka SASL credentials.
*/}}
{{- define "kmsbridge.env" -}}
{{- $v := .root.Values -}}
- name: KMSBRIDGE_KAFKA__BOOTSTRAP_SERVERS
  value: {{ required "kafka.bootstrapServers is required (host:port of your Kafka brokers)" $v.kafka.bootstrapServers | quote }}
- name: KMSBRIDGE_KAFKA__SECURITY_PROTOCOL
  value: {{ $v.kafka.securityProtocol | quote }}
{{- if $v.kafka.sasl.enabled }}
- name: KMSBRIDGE_KAFKA__SASL_MECHANISM
  value: {{ $v.kafka.sasl.mechanism | quote }}
- name: KMSBRIDGE_KAFKA__SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ required "kafka.sasl.existingSecret is required when kafka.sasl.enabled" $v.kafka.sasl.existingSecret }}
      key: {{ $v.kafka.sasl.usernameKey }}
- name: KMSBRIDGE_KAFKA__SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $v.kafka.sasl.existingSecret }}
      key: {{ $v.kafka.sasl.passwordKey }}
{{- end }}
{{- if $v.kafka.tls.caSecret }}
- name: KMSBRIDGE_KAFKA__SSL_CA_LOCATION
  value: /etc/kmsbridge/kafka-ca/ca.crt
{{- end }}
{{- range $key, $value := $v.kafka.extraConfig }}
- name: KMSBRIDGE_KAFKA__{{ $key | upper | replace "." "_" }}
  value: {{ $value | quote }}
{{- end }}
- name: KMSBRIDGE_TOPIC_PREFIX
  value: {{ $v.topicPrefix | quote }}
- name: KMSBRIDGE_GROUP_PREFIX
  value: {{ $v.groupPrefix | quote }}
- name: KMSBRIDGE_TOPICS__PARTITIONS
  value: {{ $v.topics.partitions | quote }}
- name: KMSBRIDGE_TOPICS__REPLICATION_FACTOR
  value: {{ $v.topics.replicationFactor | quote }}
{{- with $v.executor.trafficControl }}
- name: KMSBRIDGE_EXECUTOR__EXPRESS_LANE
  value: {{ .expressLane | quote }}
{{- if .rateLimitPerSecond }}
- name: KMSBRIDGE_EXECUTOR__RATE_LIMIT_PER_SECOND
  value: {{ .rateLimitPerSecond | quote }}
{{- end }}
{{- range $class, $rate := .rateLimits }}
- name: KMSBRIDGE_EXECUTOR__RATE_LIMITS__{{ upper $class }}
  value: {{ $rate | quote }}
{{- end }}
- name: KMSBRIDGE_EXECUTOR__LOOKAHEAD_MAX_ENTRIES
  value: {{ .lookaheadMaxEntries | quote }}
{{- end }}
{{- with $v.schemaRegistry }}
{{- if .url }}
- name: KMSBRIDGE_SCHEMA_REGISTRY_URL
  value: {{ .url | quote }}
- name: KMSBRIDGE_SCHEMA_REGISTRY__SUBJECT_NAME_STRATEGY
  value: {{ .subjectNameStrategy | quote }}
- name: KMSBRIDGE_SCHEMA_REGISTRY__AUTO_REGISTER
  value: {{ .autoRegister | quote }}
- name: KMSBRIDGE_SCHEMA_REGISTRY__USE_LATEST_VERSION
  value: {{ .useLatestVersion | quote }}
{{- if .existingSecret }}
- name: KMSBRIDGE_SCHEMA_REGISTRY__USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret }}
      key: {{ .usernameKey }}
- name: KMSBRIDGE_SCHEMA_REGISTRY__PASSWORD_FILE
  value: /etc/kmsbridge/schema-registry/password
{{- end }}
{{- if .caSecret }}
- name: KMSBRIDGE_SCHEMA_REGISTRY__CA_LOCATION
  value: /etc/kmsbridge/schema-registry-ca/ca.crt
{{- end }}
{{- end }}
{{- end }}
- name: KMSBRIDGE_PROVIDER_FILE
  value: /etc/kmsbridge/provider/provider.yaml
- name: KMSBRIDGE_METRICS_PORT
  value: {{ $v.metrics.port | quote }}
- name: KMSBRIDGE_HEALTH_TTL_SECONDS
  value: {{ $v.healthTtlSeconds | quote }}
- name: KMSBRIDGE_SHUTDOWN_GRACE_SECONDS
  value: {{ $v.shutdownGraceSeconds | quote }}
- name: KMSBRIDGE_LOG_LEVEL
  value: {{ $v.logLevel | quote }}
- name: KMSBRIDGE_LOG_FORMAT
  value: {{ $v.logFormat | quote }}
{{- if $v.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $v.otlpEndpoint | quote }}
- name: OTEL_SERVICE_NAME
  value: {{ printf "%s-%s" (include "kmsbridge.fullname" .root) (.component | default "job") | quote }}
{{- end }}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- if .kms }}
- name: KMSBRIDGE_KMS__ENDPOINT
  value: {{ required "kms.endpoint is required (the KMS SOAP endpoint URL)" $v.kms.endpoint | quote }}
- name: KMSBRIDGE_KMS__TOKEN_FILE
  value: /etc/kmsbridge/kms/token
- name: KMSBRIDGE_KMS__TIMEOUT_SECONDS
  value: {{ $v.kms.timeoutSeconds | quote }}
{{- if $v.kms.caSecret }}
- name: KMSBRIDGE_KMS__CA_FILE
  value: /etc/kmsbridge/kms-ca/ca.crt
{{- end }}
{{- end }}
{{- if .db }}
- name: KMSBRIDGE_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ required "database.existingSecret is required (a Secret with the database URL)" $v.database.existingSecret }}
      key: {{ $v.database.urlKey }}
{{- end }}
{{- if .pins }}
- name: KMSBRIDGE_PIN_KEYS__FILE
  value: /etc/kmsbridge/pin-keys/pin-keys.json
{{- end }}
{{- if .apiKeys }}
- name: KMSBRIDGE_API__HOST
  value: "0.0.0.0"
- name: KMSBRIDGE_API__PORT
  value: {{ $v.api.port | quote }}
- name: KMSBRIDGE_API__API_KEYS_FILE
  value: /etc/kmsbridge/api/api-keys
{{- end }}
{{- with $v.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- with .extra }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Mounts matching kmsbridge.volumes: (dict "root" $ "kms" bool "apiKeys" bool "pins" bool "provider" bool) */}}
{{- define "kmsbridge.volumeMounts" -}}
{{- $v := .root.Values -}}
- name: tmp
  mountPath: /tmp
{{- if .provider }}
- name: provider
  mountPath: /etc/kmsbridge/provider
  readOnly: true
{{- end }}
{{- if $v.kafka.tls.caSecret }}
- name: kafka-ca
  mountPath: /etc/kmsbridge/kafka-ca
  readOnly: true
{{- end }}
{{- if and $v.schemaRegistry.url $v.schemaRegistry.existingSecret }}
- name: schema-registry
  mountPath: /etc/kmsbridge/schema-registry
  readOnly: true
{{- end }}
{{- if and $v.schemaRegistry.url $v.schemaRegistry.caSecret }}
- name: schema-registry-ca
  mountPath: /etc/kmsbridge/schema-registry-ca
  readOnly: true
{{- end }}
{{- if .kms }}
- name: kms-token
  mountPath: /etc/kmsbridge/kms
  readOnly: true
{{- if $v.kms.caSecret }}
- name: kms-ca
  mountPath: /etc/kmsbridge/kms-ca
  readOnly: true
{{- end }}
{{- end }}
{{- if .apiKeys }}
- name: api-keys
  mountPath: /etc/kmsbridge/api
  readOnly: true
{{- end }}
{{- if .pins }}
- name: pin-keys
  mountPath: /etc/kmsbridge/pin-keys
  readOnly: true
{{- end }}
{{- end }}

{{- define "kmsbridge.volumes" -}}
{{- $v := .root.Values -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ $v.tmpSizeLimit }}
{{- if .provider }}
- name: provider
  configMap:
    name: {{ include "kmsbridge.fullname" .root }}-provider
{{- end }}
{{- if $v.kafka.tls.caSecret }}
- name: kafka-ca
  secret:
    secretName: {{ $v.kafka.tls.caSecret }}
    items:
      - key: {{ $v.kafka.tls.caKey }}
        path: ca.crt
{{- end }}
{{- if and $v.schemaRegistry.url $v.schemaRegistry.existingSecret }}
- name: schema-registry
  secret:
    secretName: {{ $v.schemaRegistry.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ $v.schemaRegistry.passwordKey }}
        path: password
{{- end }}
{{- if and $v.schemaRegistry.url $v.schemaRegistry.caSecret }}
- name: schema-registry-ca
  secret:
    secretName: {{ $v.schemaRegistry.caSecret }}
    items:
      - key: {{ $v.schemaRegistry.caKey }}
        path: ca.crt
{{- end }}
{{- if .kms }}
- name: kms-token
  secret:
    secretName: {{ required "kms.existingSecret is required (a Secret with the KMS token)" $v.kms.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ $v.kms.tokenKey }}
        path: token
{{- if $v.kms.caSecret }}
- name: kms-ca
  secret:
    secretName: {{ $v.kms.caSecret }}
    items:
      - key: {{ $v.kms.caKey }}
        path: ca.crt
{{- end }}
{{- end }}
{{- if .apiKeys }}
- name: api-keys
  secret:
    secretName: {{ required "api.existingSecret is required when api.enabled (a Secret with the API keys)" $v.api.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ $v.api.apiKeysKey }}
        path: api-keys
{{- end }}
{{- if .pins }}
- name: pin-keys
  secret:
    secretName: {{ required "pinKeys.existingSecret is required (a Secret with the PIN key file that seals PINs on Kafka)" $v.pinKeys.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ $v.pinKeys.key }}
        path: pin-keys.json
{{- end }}
{{- end }}

{{/* Scheduling settings shared by every pod. */}}
{{- define "kmsbridge.scheduling" -}}
{{- $v := .root.Values -}}
{{- with $v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with $v.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
One process Deployment: (dict "root" $ "component" "executor" "kms" bool "db" bool "apiKeys" bool "pins" bool).
Runs `kmsbridge run <component>`; probes hit /healthz and /readyz on the metrics port.
*/}}
{{- define "kmsbridge.deployment" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $c := index $v .component -}}
{{- $keda := and (hasKey $c "keda") $c.keda.enabled -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "kmsbridge.fullname" $root }}-{{ .component }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "kmsbridge.componentLabels" . | nindent 4 }}
spec:
  {{- if not $keda }}
  replicas: {{ $c.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "kmsbridge.componentSelectorLabels" . | nindent 6 }}
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 1
      maxUnavailable: 0
  template:
    metadata:
      labels:
        {{- include "kmsbridge.componentSelectorLabels" . | nindent 8 }}
        {{- /* selects the pods of the metrics Service (jobs have no metrics port) */}}
        kmsbridge/metrics: "true"
        {{- with $v.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        checksum/provider: {{ toYaml $v.provider | sha256sum }}
        {{- with $v.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "kmsbridge.serviceAccountName" $root }}
      automountServiceAccountToken: false
      terminationGracePeriodSeconds: {{ add $v.shutdownGraceSeconds 10 }}
      securityContext:
        {{- include "kmsbridge.podSecurityContext" $root | nindent 8 }}
      {{- with include "kmsbridge.scheduling" . }}{{ . | nindent 6 }}{{ end }}
      {{- if and $v.topologySpread.enabled (not $v.affinity) }}
      topologySpreadConstraints:
        - maxSkew: {{ $v.topologySpread.maxSkew }}
          topologyKey: kubernetes.io/hostname
          whenUnsatisfiable: ScheduleAnyway
          labelSelector:
            matchLabels:
              {{- include "kmsbridge.componentSelectorLabels" . | nindent 14 }}
      {{- end }}
      containers:
        - name: {{ .component }}
          image: {{ include "kmsbridge.image" $root }}
          imagePullPolicy: {{ $v.image.pullPolicy }}
          args: ["run", {{ .component | quote }}]
          env:
            {{- include "kmsbridge.env" (dict "root" $root "component" .component "kms" .kms "db" .db "apiKeys" .apiKeys "pins" .pins "extra" $c.extraEnv) | nindent 12 }}
          ports:
            - name: metrics
              containerPort: {{ $v.metrics.port }}
              protocol: TCP
            {{- if .apiKeys }}
            - name: http
              containerPort: {{ $v.api.port }}
              protocol: TCP
            {{- end }}
          startupProbe:
            httpGet:
              path: /healthz
              port: metrics
            periodSeconds: {{ $v.probes.startup.periodSeconds }}
            failureThreshold: {{ $v.probes.startup.failureThreshold }}
          livenessProbe:
            httpGet:
              path: /healthz
              port: metrics
            periodSeconds: {{ $v.probes.liveness.periodSeconds }}
            timeoutSeconds: {{ $v.probes.liveness.timeoutSeconds }}
            failureThreshold: {{ $v.probes.liveness.failureThreshold }}
          readinessProbe:
            httpGet:
              path: /readyz
              port: metrics
            periodSeconds: {{ $v.probes.readiness.periodSeconds }}
            timeoutSeconds: {{ $v.probes.readiness.timeoutSeconds }}
            failureThreshold: {{ $v.probes.readiness.failureThreshold }}
          resources:
            {{- toYaml $c.resources | nindent 12 }}
          securityContext:
            {{- include "kmsbridge.containerSecurityContext" $root | nindent 12 }}
          volumeMounts:
            {{- include "kmsbridge.volumeMounts" (dict "root" $root "kms" .kms "apiKeys" .apiKeys "pins" .pins "provider" true) | nindent 12 }}
      volumes:
        {{- include "kmsbridge.volumes" (dict "root" $root "kms" .kms "apiKeys" .apiKeys "pins" .pins "provider" true) | nindent 8 }}
{{- end }}

{{/* PodDisruptionBudget of one component: (dict "root" $ "component" "executor") */}}
{{- define "kmsbridge.pdb" -}}
{{- $c := index .root.Values .component -}}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "kmsbridge.fullname" .root }}-{{ .component }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "kmsbridge.componentLabels" . | nindent 4 }}
spec:
  maxUnavailable: {{ $c.pdb.maxUnavailable }}
  unhealthyPodEvictionPolicy: {{ .root.Values.pdbUnhealthyPodEvictionPolicy }}
  selector:
    matchLabels:
      {{- include "kmsbridge.componentSelectorLabels" . | nindent 6 }}
{{- end }}

{{/*
KEDA ScaledObject of one consumer: (dict "root" $ "component" "executor"). The kafka trigger reads the
group's lag like `kmsbridge lag` does; KEDA never scales past the partition count. With keda.breakerGate
(the executor's), a prometheus trigger reads kmsbridge_kms_breaker_open and a scalingModifiers formula
reports no lag while the breaker is open: lag grows during a KMS outage, and more executors would only
hammer a KMS that is down.
*/}}
{{- define "kmsbridge.scaledObject" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $c := index $v .component -}}
{{- /* the executor's express lane is read by a group of its own: a second Kafka trigger on its lag */ -}}
{{- $express := and (eq .component "executor") $v.executor.trafficControl.expressLane -}}
{{- $gate := and (hasKey $c.keda "breakerGate") $c.keda.breakerGate.enabled -}}
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: {{ include "kmsbridge.fullname" $root }}-{{ .component }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "kmsbridge.componentLabels" . | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "kmsbridge.fullname" $root }}-{{ .component }}
  minReplicaCount: {{ $c.keda.minReplicas }}
  maxReplicaCount: {{ $c.keda.maxReplicas }}
  pollingInterval: 30
  cooldownPeriod: 300
  {{- if $gate }}
  advanced:
    scalingModifiers:
      {{- if $express }}
      {{- /* the larger of the two lanes' needs, the express lag weighed to the regular target, as the
      HPA takes the larger of two triggers without the gate */}}
      {{- $weight := divf (float64 $c.keda.lagThreshold) (float64 $c.keda.expressLagThreshold) }}
      formula: {{ printf "breaker_open > 0 ? 0 : (lag > express_lag * %v ? lag : express_lag * %v)" $weight $weight | quote }}
      {{- else }}
      formula: "breaker_open > 0 ? 0 : lag"
      {{- end }}
      target: {{ $c.keda.lagThreshold | quote }}
      metricType: AverageValue
  {{- end }}
  triggers:
    {{- if $gate }}
    - type: prometheus
      name: breaker_open
      metadata:
        serverAddress: {{ required "executor.keda.breakerGate.prometheusServerAddress is required when the breaker gate is enabled (or set breakerGate.enabled=false)" $c.keda.breakerGate.prometheusServerAddress | quote }}
        query: {{ printf "max(kmsbridge_kms_breaker_open{namespace=\"%s\"}) or vector(0)" $root.Release.Namespace | quote }}
        threshold: "1"
    {{- end }}
    {{- include "kmsbridge.kafkaTrigger" (dict "root" $root "name" (ternary "lag" "" $gate) "group" (printf "%s-%s" $v.groupPrefix .component) "topic" $c.keda.topic "lagThreshold" $c.keda.lagThreshold) | nindent 4 }}
    {{- if $express }}
    {{- include "kmsbridge.kafkaTrigger" (dict "root" $root "name" (ternary "express_lag" "" $gate) "group" (printf "%s-executor-express" $v.groupPrefix) "topic" "kms.commands.express" "lagThreshold" $c.keda.expressLagThreshold) | nindent 4 }}
    {{- end }}
{{- end }}

{{- /* One KEDA Kafka trigger: the lag of consumer group `group` (on `topic`, or every topic it consumes). */ -}}
{{- define "kmsbridge.kafkaTrigger" -}}
{{- $v := .root.Values -}}
- type: kafka
  {{- with .name }}
  name: {{ . }}
  {{- end }}
  metadata:
    bootstrapServers: {{ required "kafka.bootstrapServers is required" $v.kafka.bootstrapServers | quote }}
    consumerGroup: {{ .group | quote }}
    {{- with .topic }}
    topic: {{ printf "%s%s" $v.topicPrefix . | quote }}
    {{- end }}
    lagThreshold: {{ .lagThreshold | quote }}
    offsetResetPolicy: earliest
    allowIdleConsumers: "false"
    {{- if $v.kafka.sasl.enabled }}
    sasl: {{ get (dict "PLAIN" "plaintext" "SCRAM-SHA-256" "scram_sha256" "SCRAM-SHA-512" "scram_sha512" "OAUTHBEARER" "oauthbearer") $v.kafka.sasl.mechanism | required "kafka.sasl.mechanism must be PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER" | quote }}
    {{- end }}
    {{- if has $v.kafka.securityProtocol (list "SSL" "SASL_SSL") }}
    tls: enable
    {{- end }}
  {{- if or $v.kafka.sasl.enabled $v.kafka.tls.caSecret }}
  authenticationRef:
    name: {{ include "kmsbridge.fullname" .root }}-kafka
  {{- end }}
{{- end }}
