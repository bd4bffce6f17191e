// Package localkms routes AWS KMS requests to local-kms's handlers
// (github.com/nsmithuk/local-kms, an AWS KMS emulator) for the suites that
// serve it in their own process: the fault matrix, the e2e suite and the
// benchmark rig. local-kms's own router, src.HandleRequest, logs every call
// through a package logger nobody outside can quiet or redirect; with Route
// each suite keeps its own logger and the operations keywarden and the
// tests call are listed once.
package localkms

import (
	"strings"

	"github.com/nsmithuk/local-kms/src/handler"
)

// Route answers the operation an X-Amz-Target header names
// ("TrentService.Encrypt", or "Encrypt") with h, and reports false for an
// operation it does not route: the caller answers 501.
func Route(h *handler.RequestHandler, target string) (handler.Response, bool) {
	switch strings.TrimPrefix(target, "TrentService.") {
	case "Encrypt":
		return h.Encrypt(), true
	case "Decrypt":
		return h.Decrypt(), true
	case "DescribeKey":
		return h.DescribeKey(), true
	case "CreateKey":
		return h.CreateKey(), true
	case "CreateAlias":
		return h.CreateAlias(), true
	case "UpdateAlias":
		return h.UpdateAlias(), true
	case "DisableKey":
		return h.DisableKey(), true
	case "ScheduleKeyDeletion":
		return h.ScheduleKeyDeletion(), true
	}
	return handler.Response{}, false
}
