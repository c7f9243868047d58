//go:build tools

// Package tools pins the Kubernetes and etcd servers that keyd/kube's
// integration test runs. It is a build module of its own (scripts/k8s.sh)
// so that the project's go.mod carries neither the servers' dependency
// graph nor anything that is not needed to build Palisade itself.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
)
