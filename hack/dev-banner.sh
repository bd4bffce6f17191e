#!/usr/bin/env bash
# Printed by `make run`: where the socket is and how to point an apiserver at it.
dev=$1
cat <<MSG

keywarden dev instance
  keyset:   $dev/keyset.json   (dev root key; never use it for a real cluster)
  socket:   unix://$dev/run/kms.sock
  metrics:  http://127.0.0.1:8095/metrics   health: /healthz /readyz
  try it:   bin/kmsctl check --socket unix://$dev/run/kms.sock

EncryptionConfiguration for kube-apiserver (--encryption-provider-config):

apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources: [secrets]
    providers:
      - kms:
          apiVersion: v2
          name: keywarden
          endpoint: unix://$dev/run/kms.sock
          timeout: 3s
      - identity: {}

MSG
