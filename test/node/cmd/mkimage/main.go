// Command mkimage writes a docker-archive of one image made of tar files
// (root filesystems made by tar): the node test's base images for the
// Dockerfile, built here from Debian packages and the Go toolchain because
// no registry is reachable. go-containerregistry does the image.
//
//	mkimage -o golang.tar -ref localhost/keywarden-base/golang:1.27.3-bookworm \
//	  -layer rootfs.tar -env PATH=/usr/local/go/bin:/usr/bin:/bin -env GOPATH=/go
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/keywarden/keywarden/test/node/nodeimages"
)

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	var spec nodeimages.Spec
	var layers, env list
	out := flag.String("o", "", "the docker-archive to write")
	flag.StringVar(&spec.Ref, "ref", "", "the image's name and tag")
	flag.Var(&layers, "layer", "a tar file, the next layer (repeatable)")
	flag.Var(&env, "env", "KEY=value in the image's environment (repeatable)")
	flag.StringVar(&spec.User, "user", "", "the image's user")
	flag.StringVar(&spec.WorkingDir, "workdir", "", "the image's working directory")
	flag.StringVar(&spec.Arch, "arch", "amd64", "the architecture of the image's files (GOARCH)")
	flag.Parse()
	if *out == "" || spec.Ref == "" || len(layers) == 0 {
		fmt.Fprintln(os.Stderr, "mkimage: -o, -ref and at least one -layer are required")
		os.Exit(2)
	}
	spec.Layers, spec.Env = layers, env
	if err := nodeimages.WriteArchive(*out, spec); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}
