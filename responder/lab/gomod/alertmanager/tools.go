//go:build tools

// Package tools keeps Alertmanager in this module's requirements so `go mod tidy` keeps it.
package tools

import _ "github.com/prometheus/alertmanager/cmd/alertmanager"
