{{/*
Shared pieces of the Trellis chart. Object names are fixed (see values.yaml, "Names"): other
parts of Trellis find them by name.
*/}}

{{/* Labels on every object. */}}
{{- define "trellis.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/part-of: trellis
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}

{{/* Selector labels of one component; call with (dict "root" $ "component" "control-plane"). */}}
{{- define "trellis.selectorLabels" -}}
app.kubernetes.io/name: trellis-{{ .component }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* All labels of one component's objects; same argument as trellis.selectorLabels. */}}
{{- define "trellis.componentLabels" -}}
{{ include "trellis.labels" .root }}
{{ include "trellis.selectorLabels" . }}
{{- end }}

{{/*
An image reference: (dict "root" $ "image" .Values.x.image). <registry>/<name>@<digest> when a
digest is given, else <registry>/<name>:<tag>, the tag falling back to image.tag, then to the
chart's appVersion.
*/}}
{{- define "trellis.image" -}}
{{- $root := .root -}}
{{- $registry := $root.Values.image.registry | trimSuffix "/" -}}
{{- if .image.digest -}}
{{- printf "%s/%s@%s" $registry .image.name .image.digest -}}
{{- else -}}
{{- $tag := .image.tag | default $root.Values.image.tag | default $root.Chart.AppVersion -}}
{{- printf "%s/%s:%s" $registry .image.name (toString $tag) -}}
{{- end -}}
{{- end }}

{{/* The init image: proxy.initImage when it names one, else the proxy image. */}}
{{- define "trellis.initImage" -}}
{{- if .Values.proxy.initImage.name -}}
{{- include "trellis.image" (dict "root" . "image" .Values.proxy.initImage) -}}
{{- else -}}
{{- include "trellis.image" (dict "root" . "image" .Values.proxy.image) -}}
{{- end -}}
{{- end }}

{{/* The control plane's address as proxies dial it (port 15012, docs/design.md). */}}
{{- define "trellis.controlPlaneAddress" -}}
trellis-control-plane.{{ .Release.Namespace }}.svc:15012
{{- end }}

{{/*
The control plane's SPIFFE ID, which proxies require it to present: its ServiceAccount in the
release namespace. The control plane is started with the same namespace and ServiceAccount.
*/}}
{{- define "trellis.controlPlaneId" -}}
spiffe://{{ .Values.trustDomain }}/ns/{{ .Release.Namespace }}/sa/trellis-control-plane
{{- end }}

{{/*
Pod security context shared by the control plane and the injector: Pod Security "restricted".
UID/GID 65532 is the `nonroot` user of the distroless images (docker/*.Dockerfile). fsGroup
makes mounted Secret files group-readable by that user (mode 0440, owner root:65532).
*/}}
{{- define "trellis.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Container security context: restricted, read-only root file system, no capabilities. */}}
{{- define "trellis.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
privileged: false
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
Scheduling of one component: (dict "root" $ "component" "injector" "values" .Values.injector).
Renders nodeSelector, tolerations, affinity (raw, or pod anti-affinity by hostname) and
topologySpreadConstraints, with label selectors that match the component's pods.
*/}}
{{- define "trellis.scheduling" -}}
{{- $v := .values -}}
{{- with $v.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with $v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if $v.affinity }}
affinity:
  {{- toYaml $v.affinity | nindent 2 }}
{{- else if eq $v.podAntiAffinity "preferred" }}
affinity:
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "trellis.selectorLabels" . | nindent 14 }}
{{- else if eq $v.podAntiAffinity "required" }}
affinity:
  podAntiAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      - topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "trellis.selectorLabels" . | nindent 12 }}
{{- end }}
{{- if $v.topologySpread.enabled }}
topologySpreadConstraints:
  - maxSkew: {{ $v.topologySpread.maxSkew }}
    topologyKey: {{ $v.topologySpread.topologyKey }}
    whenUnsatisfiable: {{ $v.topologySpread.whenUnsatisfiable }}
    labelSelector:
      matchLabels:
        {{- include "trellis.selectorLabels" . | nindent 8 }}
{{- end }}
{{- end }}

{{/* An ingress/egress peer list, or nothing when empty (an absent list means "any"). */}}
{{- define "trellis.peers" -}}
{{- with .peers }}
{{ $.key }}:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Egress to the API server: networkPolicy.apiServer's CIDRs and ports. */}}
{{- define "trellis.apiServerEgress" -}}
# The API server (see networkPolicy.apiServer: enforced after the Service's DNAT).
- to:
    {{- range .Values.networkPolicy.apiServer.cidrs }}
    - ipBlock:
        cidr: {{ . | quote }}
    {{- end }}
  ports:
    {{- range .Values.networkPolicy.apiServer.ports }}
    - protocol: TCP
      port: {{ . }}
    {{- end }}
{{- end }}

{{/* What both webhooks of trellis-injector share. */}}
{{- define "trellis.webhookCommon" -}}
rules:
  - apiGroups: [""]
    apiVersions: ["v1"]
    operations: ["CREATE"]
    resources: ["pods"]
    scope: Namespaced
sideEffects: None
admissionReviewVersions: ["v1"]
matchPolicy: Equivalent
timeoutSeconds: {{ .Values.injector.webhook.timeoutSeconds }}
# A later webhook may add containers; the injector answers a reinvocation of an injected pod
# with no patch.
reinvocationPolicy: IfNeeded
{{- end }}

{{/*
Security-linter exceptions (checkov, run by scripts/check-charts) for a workload pulling one
Trellis image: (dict "root" $ "image" .Values.x.image). Each is justified in its text and
rendered only when it applies: pin a digest, or choose pullPolicy Always, and it disappears.
*/}}
{{- define "trellis.imageCheckSkips" -}}
{{- if not .image.digest }}
checkov.io/skip1: CKV_K8S_43=Pinned by an immutable release tag (the chart appVersion); set the image digest value to pin by digest.
{{- end }}
{{- if ne .root.Values.image.pullPolicy "Always" }}
checkov.io/skip2: CKV_K8S_15=Release tags are immutable so IfNotPresent is safe and avoids a registry round trip at every start; set image.pullPolicy Always to change.
{{- end }}
{{- end }}
