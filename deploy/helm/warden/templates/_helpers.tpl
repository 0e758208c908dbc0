{{/* The control plane's image. */}}
{{- define "warden.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The sidecar image. */}}
{{- define "warden.proxyImage" -}}
{{ .Values.proxyImage.repository }}:{{ .Values.proxyImage.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The trust bundle (PEM), required. */}}
{{- define "warden.caBundle" -}}
{{ required "ca.bundle is required: the trust bundle, e.g. --set-file ca.bundle=warden-ca/bundle.crt" .Values.ca.bundle }}
{{- end }}
