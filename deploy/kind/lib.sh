# shellcheck shell=bash
# Functions shared by kind-up.sh and kind-e2e.sh. deploy_test.go (and the e2e
# tests, against a real kube-apiserver) run them too, so what the scripts
# generate and parse is checked even where Docker is not available.

# kind_manifest IMAGE IMAGE_ID < deploy/static-pod/keywarden.yaml
# The static pod manifest for kind: the image loaded with `kind load`, never
# pulled, and an annotation with the image ID so the kubelet restarts the pod
# when a new image is loaded under the same tag.
kind_manifest() {
	awk -v image="$1" -v id="$2" '
		/^metadata:$/ { print; print "  annotations:"; print "    kind-up.keywarden.io/image-id: \"" id "\""; next }
		/^ *image: / { sub(/image: .*/, "image: " image) }
		/imagePullPolicy: IfNotPresent/ { sub(/IfNotPresent/, "Never") }
		{ print }'
}

# encryption_reloads < kube-apiserver /metrics text
# Prints how many times kube-apiserver has reloaded its EncryptionConfiguration
# successfully (0 if never).
encryption_reloads() {
	awk '/^apiserver_encryption_config_controller_automatic_reloads_total\{/ && /status="success"/ { n += $NF } END { printf "%d\n", n }'
}

# kms_v2_prefix PROVIDER: the prefix kube-apiserver writes before every value
# it stores encrypted by the KMS v2 provider named PROVIDER.
kms_v2_prefix() {
	printf 'k8s:enc:kms:v2:%s:' "$1"
}
