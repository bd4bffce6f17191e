// Package buildinfo is what a binary knows about its own build: the release
// version and commit stamped by the Makefile (and the Dockerfile, and
// hack/release), the Go toolchain, the platform and whether Go's FIPS 140-3
// module is enabled (internal/fipsmode). keywarden and kmsctl print it for --version; the
// build_info metric carries it.
//
// Stamping, as `make build` does it:
//
//	go build -ldflags "-X github.com/keywarden/keywarden/internal/buildinfo.version=v1.2.3
//	                   -X github.com/keywarden/keywarden/internal/buildinfo.commit=<40 hex>"
package buildinfo

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/keywarden/keywarden/internal/fipsmode"
)

// Set with -ldflags -X; see the package comment.
var (
	version = "dev"
	commit  = ""
)

// Version is the stamped release version ("dev" when none was stamped).
func Version() string { return version }

// Commit is the stamped commit, else the one the go command recorded from
// the checkout it built in (vcs.revision, with "-dirty" when it had
// uncommitted changes), else "unknown".
func Commit() string {
	if commit != "" {
		return commit
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	var rev string
	var dirty bool
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		return "unknown"
	}
	if dirty {
		rev += "-dirty"
	}
	return rev
}

// GoVersion is the Go toolchain that built the binary.
func GoVersion() string { return runtime.Version() }

// Platform is GOOS/GOARCH.
func Platform() string { return runtime.GOOS + "/" + runtime.GOARCH }

// String is keywarden's --version text: the first line is "<name> <version>",
// as before there was more to say, so scripts that read one line keep
// working; Details follow.
func String(name string) string {
	return name + " " + Version() + "\n" + Details()
}

// Details are the lines after the first of --version: commit, Go, platform
// and FIPS 140-3 mode.
func Details() string {
	fips := fipsmode.Mode()
	if fips != fipsmode.Off {
		fips += " (Go module " + fipsmode.Module() + ")"
	}
	return fmt.Sprintf("commit:   %s\ngo:       %s\nplatform: %s\nfips140:  %s\n",
		Commit(), GoVersion(), Platform(), fips)
}
