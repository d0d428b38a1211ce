{{/* Names and labels. */}}
{{- define "kube-dispatcher.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kube-dispatcher.fullname" -}}
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

{{- define "kube-dispatcher.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kube-dispatcher.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kube-dispatcher.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kube-dispatcher.labels" -}}
helm.sh/chart: {{ include "kube-dispatcher.chart" . }}
{{ include "kube-dispatcher.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kube-dispatcher
{{- end -}}

{{- define "kube-dispatcher.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kube-dispatcher.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kube-dispatcher.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Where the settings file, the Vault CA and the Vault token are mounted. */}}
{{- define "kube-dispatcher.configDir" -}}/etc/kube-dispatcher{{- end -}}
{{- define "kube-dispatcher.vaultTokenDir" -}}/var/run/secrets/kube-dispatcher/vault{{- end -}}

{{/*
The settings document (dispatcher/settings.py) as YAML: values.config plus what the chart
knows (port, state namespace, leader election, Vault). Keys set in values.config win.
*/}}
{{- define "kube-dispatcher.config" -}}
{{- $config := deepCopy .Values.config -}}
{{- $service := deepCopy (default dict (get $config "service")) -}}
{{- if not (hasKey $service "port") -}}{{- $_ := set $service "port" 8080 -}}{{- end -}}
{{- if not (hasKey $service "state_namespace") -}}{{- $_ := set $service "state_namespace" .Release.Namespace -}}{{- end -}}
{{- if not (hasKey $service "leader_election") -}}{{- $_ := set $service "leader_election" (gt (int .Values.replicaCount) 1) -}}{{- end -}}
{{- if and (gt (int .Values.replicaCount) 1) (not $service.leader_election) -}}
{{- fail "config.service.leader_election is false with replicaCount > 1: every replica would run the dispatch loop and create duplicate pods. Turn leader election on or run one replica." -}}
{{- end -}}
{{- if not (hasKey $service "metrics_port") -}}{{- $_ := set $service "metrics_port" .Values.metrics.port -}}{{- end -}}
{{- if not (hasKey $service "auth") -}}
{{- $auth := dict -}}
{{- if .Values.auth.tokenReview.enabled -}}{{- $_ := set $auth "token_review" (dict "audience" .Values.auth.tokenReview.audience) -}}{{- end -}}
{{- with .Values.auth.staticTokens -}}{{- $_ := set $auth "static_tokens" . -}}{{- end -}}
{{- if not $auth -}}
{{- fail "no authentication: enable auth.tokenReview or list auth.staticTokens (the dispatcher refuses to start without a method)" -}}
{{- end -}}
{{- $_ := set $service "auth" $auth -}}
{{- end -}}
{{- $_ := set $config "service" $service -}}
{{- if .Values.vault.enabled -}}
{{- $kubernetes := dict "role" (required "vault.auth.role is required when vault.enabled" .Values.vault.auth.role) "mount" .Values.vault.auth.mount -}}
{{- if .Values.vault.auth.tokenAudience -}}
{{- $_ := set $kubernetes "jwt_path" (printf "%s/token" (include "kube-dispatcher.vaultTokenDir" .)) -}}
{{- end -}}
{{- $vault := dict "url" (required "vault.address is required when vault.enabled" .Values.vault.address) "auth" (dict "kubernetes" $kubernetes) -}}
{{- if .Values.vault.namespace -}}{{- $_ := set $vault "namespace" .Values.vault.namespace -}}{{- end -}}
{{- if .Values.vault.caConfigMap.name -}}
{{- $_ := set $vault "ca_file" (printf "%s/vault-ca.crt" (include "kube-dispatcher.configDir" .)) -}}
{{- end -}}
{{- $_ := set $config "vault" (mergeOverwrite $vault (deepCopy (default dict (get $config "vault")))) -}}
{{- end -}}
{{- toYaml $config -}}
{{- end -}}

{{/* The settings' service section, as computed above (for the port and namespaces). */}}
{{- define "kube-dispatcher.serviceSettings" -}}
{{- toJson (get (include "kube-dispatcher.config" . | fromYaml) "service") -}}
{{- end -}}

{{/*
Namespaces of the in-plane cluster where tasks run (JSON list): rbac.taskNamespaces, else
the in-plane cluster's pod_defaults.namespace (default "default") and allowed_namespaces.
*/}}
{{- define "kube-dispatcher.taskNamespaces" -}}
{{- $namespaces := list -}}
{{- if .Values.rbac.taskNamespaces -}}
{{- $namespaces = .Values.rbac.taskNamespaces -}}
{{- else -}}
{{- range .Values.config.clusters -}}
{{- if eq (toString .role) "in-plane" -}}
{{- $defaults := default dict .pod_defaults -}}
{{- $namespaces = append $namespaces (default "default" $defaults.namespace) -}}
{{- range (default list $defaults.allowed_namespaces) -}}
{{- $namespaces = append $namespaces . -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toJson (uniq $namespaces) -}}
{{- end -}}

{{/*
"true" when job records and the Lease live in the in-plane cluster (so this chart's RBAC
is what grants them): service.state_cluster unset or naming the in-plane cluster.
*/}}
{{- define "kube-dispatcher.stateInPlane" -}}
{{- $service := include "kube-dispatcher.serviceSettings" . | fromJson -}}
{{- $inPlane := "" -}}
{{- range .Values.config.clusters -}}
{{- if eq (toString .role) "in-plane" -}}{{- $inPlane = .name -}}{{- end -}}
{{- end -}}
{{- if or (not $service.state_cluster) (eq (toString $service.state_cluster) $inPlane) -}}true{{- end -}}
{{- end -}}
