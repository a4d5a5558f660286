//go:build tools

// Package tools keeps helm in this module's requirements so `go mod tidy` keeps it.
package tools

import _ "helm.sh/helm/v3/cmd/helm"
