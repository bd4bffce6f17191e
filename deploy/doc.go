// Package deploy holds keywarden's deployment files (static pod, sidecar in
// the kube-apiserver pod, systemd unit for k3s/RKE2, EncryptionConfigurations,
// kubeadm and kind configuration, Prometheus alerts, Grafana dashboard) and the tests that keep them correct: every file parses,
// the pieces agree with each other and with the real binary's flags and
// metrics, the alerts pass promtool, and (with the e2e build tag) the
// manifests are accepted by a real kube-apiserver, and keywarden run with
// the arguments of the unit and the sidecar serves one.
//
// There is no Go API here: the package exists for its tests.
package deploy
