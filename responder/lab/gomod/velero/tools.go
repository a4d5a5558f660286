//go:build tools

// Package tools keeps Velero and its AWS plugin in this module's requirements so `go mod tidy` keeps them.
package tools

import (
	_ "github.com/vmware-tanzu/velero-plugin-for-aws/velero-plugin-for-aws"
	_ "github.com/vmware-tanzu/velero/cmd/velero"
)
