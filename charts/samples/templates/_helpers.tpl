{{/* Labels on every object of the samples. */}}
{{- define "samples.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/part-of: trellis-samples
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Pod security context: Pod Security "restricted" for the application containers. */}}
{{- define "samples.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Container security context. */}}
{{- define "samples.containerSecurityContext" -}}
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
A client that calls the backend every few seconds and logs each outcome: (dict "root" $ "name"
"frontend"). Its heartbeat file tells the probes the loop is alive. Probes are exec probes on
purpose: a kubelet HTTP or TCP probe to a meshed pod's port is redirected to the proxy's inbound
listener, which refuses plaintext in STRICT mode; exec runs inside the pod and loopback is never
redirected.
*/}}
{{- define "samples.client" -}}
{{- $root := .root -}}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ .name }}
  namespace: {{ $root.Values.namespace }}
  labels:
    {{- include "samples.labels" $root | nindent 4 }}
    app: {{ .name }}
# The application does not call the API server; the injected proxy gets its own projected
# token (audience trellis-ca).
automountServiceAccountToken: false
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .name }}
  namespace: {{ $root.Values.namespace }}
  labels:
    {{- include "samples.labels" $root | nindent 4 }}
    app: {{ .name }}
  annotations:
    {{- include "samples.imageCheckSkips" $root | nindent 4 }}
spec:
  replicas: 1
  selector:
    matchLabels:
      app: {{ .name }}
  template:
    metadata:
      labels:
        {{- include "samples.labels" $root | nindent 8 }}
        app: {{ .name }}
      annotations:
        kubectl.kubernetes.io/default-container: {{ .name }}
    spec:
      serviceAccountName: {{ .name }}
      automountServiceAccountToken: false
      securityContext:
        {{- include "samples.podSecurityContext" $root | nindent 8 }}
      containers:
        - name: {{ .name }}
          image: {{ $root.Values.client.image | quote }}
          imagePullPolicy: {{ $root.Values.imagePullPolicy }}
          command: ["/bin/sh", "-c"]
          args:
            - |
              # {{ .name }} (spiffe://{{ $root.Values.trustDomain }}/ns/{{ $root.Values.namespace }}/sa/{{ .name }}) calls the backend.
              while true; do
                now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
                if out=$(curl -sS --fail --max-time 2 http://backend:8080/ 2>&1); then
                  echo "$now {{ .name }} -> backend: allowed: $out"
                else
                  echo "$now {{ .name }} -> backend: refused: $out"
                fi
                touch /tmp/heartbeat
                sleep {{ $root.Values.client.intervalSeconds }}
              done
          livenessProbe:
            exec:
              command: ["/bin/sh", "-c", "test -n \"$(find /tmp/heartbeat -mmin -1)\""]
            initialDelaySeconds: 10
            periodSeconds: 10
          readinessProbe:
            exec:
              command: ["/bin/sh", "-c", "test -f /tmp/heartbeat"]
            periodSeconds: 5
          resources:
            {{- toYaml $root.Values.client.resources | nindent 12 }}
          securityContext:
            {{- include "samples.containerSecurityContext" $root | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: 1Mi
{{- end }}

{{/*
Security-linter exceptions (checkov, run by scripts/check-charts) of the sample workloads,
justified in their text. Shown to people, so readable tags instead of digests.
*/}}
{{- define "samples.imageCheckSkips" -}}
checkov.io/skip1: CKV_K8S_43=Sample images are pinned by version tag so that readers see what runs; pin digests in real deployments.
{{- if ne .Values.imagePullPolicy "Always" }}
checkov.io/skip2: CKV_K8S_15=Version-tagged public sample images; IfNotPresent avoids a registry round trip at every restart.
{{- end }}
{{- end }}
