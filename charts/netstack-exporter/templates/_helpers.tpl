{{- define "netstack-exporter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "netstack-exporter.fullname" -}}
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

{{- define "netstack-exporter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "netstack-exporter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "netstack-exporter.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "netstack-exporter.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: exporter
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* [registry/]repository[:tag][@digest]; the tag defaults to the chart's appVersion. */}}
{{- define "netstack-exporter.image" -}}
{{- $i := .Values.image -}}
{{- $repo := ternary (printf "%s/%s" (trimSuffix "/" $i.registry) $i.repository) $i.repository (not (empty $i.registry)) -}}
{{- if $i.digest -}}
{{ $repo }}@{{ $i.digest }}
{{- else -}}
{{ $repo }}:{{ $i.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{/* The scrape limits of a monitor, only those set (0 = none). Usage: (list $ .Values.podMonitor) */}}
{{- define "netstack-exporter.scrapeLimits" -}}
{{- $m := index . 1 -}}
{{- range $key := list "sampleLimit" "targetLimit" "labelLimit" "labelNameLengthLimit" "labelValueLengthLimit" }}
{{- with index $m $key }}
{{ $key }}: {{ . }}
{{- end }}
{{- end }}
{{- with $m.targetLabels }}
podTargetLabels:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "netstack-exporter.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "netstack-exporter.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Where the fsync probe directories live inside the container. */}}
{{- define "netstack-exporter.fsyncMountBase" -}}/var/lib/netstack-exporter/fsync{{- end -}}

{{/* Relabelings shared by PodMonitor and ServiceMonitor: job = the `job` value, whatever
nameOverride is (the rules the chart renders select the same job); instance = node name, so
dashboards and alerts name the node rather than host-IP:port. */}}
{{- define "netstack-exporter.nodeRelabelings" -}}
- targetLabel: job
  replacement: {{ include "netstack-exporter.job" . | quote }}
  action: replace
- sourceLabels: [__meta_kubernetes_pod_node_name]
  targetLabel: instance
  action: replace
- sourceLabels: [__meta_kubernetes_pod_node_name]
  targetLabel: node
  action: replace
{{- end -}}

{{/* --web.listen-address: an explicit web.listenHost, else every interface, else the node's own
address from the downward API ([$(HOST_IP)]:port; brackets work for IPv4 and IPv6 alike). */}}
{{- define "netstack-exporter.listenAddress" -}}
{{- $w := .Values.web -}}
{{- if $w.listenHost -}}
{{- if contains ":" $w.listenHost }}[{{ $w.listenHost }}]{{ else }}{{ $w.listenHost }}{{ end }}:{{ $w.port }}
{{- else if $w.listenOnAllInterfaces -}}
:{{ $w.port }}
{{- else -}}
[$(HOST_IP)]:{{ $w.port }}
{{- end -}}
{{- end -}}

{{- define "netstack-exporter.listenOnHostIP" -}}
{{- if not (or .Values.web.listenHost .Values.web.listenOnAllInterfaces) }}true{{ end -}}
{{- end -}}

{{/* The Secret holding web.yml: the given one, or the chart's own when web.config.content is set. */}}
{{- define "netstack-exporter.webConfigSecret" -}}
{{- if .Values.web.config.existingSecret -}}
{{ .Values.web.config.existingSecret }}
{{- else if .Values.web.config.content -}}
{{ include "netstack-exporter.fullname" . }}-web-config
{{- end -}}
{{- end -}}

{{/* A probe from values: https with TLS; a TCP check when client certificates are required
(kubelet has none). Usage: include "netstack-exporter.probe" (list $ .Values.livenessProbe) */}}
{{- define "netstack-exporter.probe" -}}
{{- $root := index . 0 -}}
{{- $probe := deepCopy (index . 1) -}}
{{- $tls := $root.Values.web.tls -}}
{{- if and $tls.enabled $tls.clientCertRequired $probe.httpGet -}}
{{- $_ := set $probe "tcpSocket" (dict "port" $probe.httpGet.port) -}}
{{- $_ := unset $probe "httpGet" -}}
{{- else if and $tls.enabled $probe.httpGet -}}
{{- $_ := set $probe.httpGet "scheme" "HTTPS" -}}
{{- end -}}
{{- toYaml $probe -}}
{{- end -}}

{{/* scheme, tlsConfig and basicAuth of a monitor endpoint. Usage: (list $ .Values.podMonitor) */}}
{{- define "netstack-exporter.monitorAuth" -}}
{{- $root := index . 0 -}}
{{- $m := index . 1 -}}
{{- if $root.Values.web.tls.enabled }}
scheme: https
{{- with $m.tlsConfig }}
tlsConfig:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
{{- with $m.basicAuth }}
basicAuth:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}


{{/* The job label of the scraped series: the monitors set it, the PrometheusRule selects it. */}}
{{- define "netstack-exporter.job" -}}
{{- .Values.job | default "netstack-exporter" -}}
{{- end -}}
