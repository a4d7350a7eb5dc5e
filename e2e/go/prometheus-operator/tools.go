//go:build tools

// Package tools pins the prometheus-operator command so `go mod tidy` keeps its dependencies.
package tools

import _ "github.com/prometheus-operator/prometheus-operator/cmd/operator"
