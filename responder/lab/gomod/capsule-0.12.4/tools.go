//go:build tools

// Package tools keeps the Capsule controller in this module's requirements so `go mod tidy` keeps it.
package tools

import _ "github.com/projectcapsule/capsule/cmd"
