// Package nodeimages assembles the container images the node test
// (test/node) runs under a real kubelet, from binaries built on this machine:
// no registry is reachable here. go-containerregistry builds the image
// (config, manifest, layer digests) and writes a docker-archive that
// `ctr images import` takes; this package only lists the files of each
// image's one layer.
package nodeimages

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// File is one file of an image: its content comes from Src (a file on this
// machine) or, when Src is empty, from Data.
type File struct {
	Path string // absolute path in the image
	Src  string
	Data []byte
	Mode int64 // permission bits; 0 means 0755 for Src, 0644 for Data
}

// Spec describes one image.
type Spec struct {
	Ref string // e.g. registry.k8s.io/kube-apiserver:v1.37.2
	// Layers are tar files (a root filesystem made by tar, say), the
	// image's first layers in order; Files, if any, is one more on top.
	Layers     []string
	Files      []File
	Entrypoint []string
	User       string // e.g. 65532:65532; empty is root
	WorkingDir string
	Env        []string          // KEY=value
	Labels     map[string]string // image labels
	Arch       string            // GOARCH of the image's files; empty is amd64
}

// epoch is every file's modification time, so an image's digest depends
// only on its contents.
var epoch = time.Unix(0, 0).UTC()

// Image builds the image of s, linux/<s.Arch> (amd64 by default): the tar files of s.Layers,
// then one layer holding s.Files (and the directories above them, 0755
// root).
func Image(s Spec) (v1.Image, error) {
	var layers []v1.Layer
	for _, p := range s.Layers {
		l, err := tarball.LayerFromFile(p)
		if err != nil {
			return nil, fmt.Errorf("%s: layer %s: %w", s.Ref, p, err)
		}
		layers = append(layers, l)
	}
	if len(s.Files) > 0 || len(layers) == 0 {
		layerTar, err := layer(s.Files)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", s.Ref, err)
		}
		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(layerTar)), nil
		})
		if err != nil {
			return nil, err
		}
		layers = append(layers, l)
	}
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", s.Arch
	if s.Arch == "" {
		cf.Architecture = "amd64"
	}
	cf.Created = v1.Time{Time: epoch}
	cf.Config.Entrypoint = s.Entrypoint
	cf.Config.User = s.User
	cf.Config.WorkingDir = s.WorkingDir
	cf.Config.Env = s.Env
	if !hasPath(s.Env) {
		cf.Config.Env = append([]string{"PATH=/usr/local/bin:/usr/bin:/bin"}, s.Env...)
	}
	cf.Config.Labels = s.Labels
	return mutate.ConfigFile(img, cf)
}

func hasPath(env []string) bool {
	for _, kv := range env {
		if strings.HasPrefix(kv, "PATH=") {
			return true
		}
	}
	return false
}

// layer writes the tar stream of files, parents first, sorted.
func layer(files []File) ([]byte, error) {
	dirs := map[string]bool{}
	byPath := map[string]File{}
	for _, f := range files {
		p := path.Clean(f.Path)
		if !path.IsAbs(p) || p == "/" {
			return nil, fmt.Errorf("file path %q: want an absolute path", f.Path)
		}
		if _, dup := byPath[p]; dup {
			return nil, fmt.Errorf("file %s listed twice", p)
		}
		byPath[p] = f
		for d := path.Dir(p); d != "/"; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	var names []string
	for d := range dirs {
		if _, isFile := byPath[d]; isFile {
			return nil, fmt.Errorf("%s is both a file and a directory", d)
		}
		names = append(names, d)
	}
	for p := range byPath {
		names = append(names, p)
	}
	sort.Strings(names)

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, p := range names {
		hdr := &tar.Header{Name: strings.TrimPrefix(p, "/"), ModTime: epoch, Format: tar.FormatPAX}
		if dirs[p] {
			hdr.Typeflag, hdr.Name, hdr.Mode = tar.TypeDir, hdr.Name+"/", 0o755
			if err := tw.WriteHeader(hdr); err != nil {
				return nil, err
			}
			continue
		}
		f := byPath[p]
		data, mode := f.Data, f.Mode
		if f.Src != "" {
			b, err := os.ReadFile(f.Src)
			if err != nil {
				return nil, err
			}
			data = b
			if mode == 0 {
				mode = 0o755
			}
		} else if mode == 0 {
			mode = 0o644
		}
		hdr.Typeflag, hdr.Mode, hdr.Size = tar.TypeReg, mode, int64(len(data))
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// WriteArchive writes the images of specs, tagged with their Ref, to one
// docker-archive at file (what `ctr -n k8s.io images import` reads).
func WriteArchive(file string, specs ...Spec) error {
	refs := map[name.Reference]v1.Image{}
	for _, s := range specs {
		ref, err := name.ParseReference(s.Ref)
		if err != nil {
			return fmt.Errorf("image reference %q: %w", s.Ref, err)
		}
		img, err := Image(s)
		if err != nil {
			return err
		}
		refs[ref] = img
	}
	return tarball.MultiRefWriteToFile(file, refs)
}

// Passwd is an /etc/passwd and /etc/group pair naming root and the
// distroless-style nonroot user (65532), for images that run as 65532.
func Passwd() []File {
	return []File{
		{Path: "/etc/passwd", Data: []byte("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n")},
		{Path: "/etc/group", Data: []byte("root:x:0:\nnonroot:x:65532:\n")},
	}
}

// ExtractFile copies the file at path (absolute, in the image) out of the
// image ref in the docker-archive archive to dst, mode 0755: what
// `docker create` and `docker cp` do for README's kmsctl.
func ExtractFile(archive, ref, path, dst string) error {
	tag, err := name.NewTag(ref)
	if err != nil {
		return err
	}
	img, err := tarball.ImageFromPath(archive, &tag)
	if err != nil {
		return fmt.Errorf("%s in %s: %w", ref, archive, err)
	}
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	want := strings.TrimPrefix(path, "/")
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return fmt.Errorf("%s has no %s", ref, path)
		}
		if err != nil {
			return err
		}
		if strings.TrimPrefix(h.Name, "./") != want || h.Typeflag != tar.TypeReg {
			continue
		}
		f, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
		if err != nil {
			return err
		}
		if _, err := io.Copy(f, tr); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	}
}

// Config returns the config of the image ref in the docker-archive archive.
func Config(archive, ref string) (v1.Config, error) {
	tag, err := name.NewTag(ref)
	if err != nil {
		return v1.Config{}, err
	}
	img, err := tarball.ImageFromPath(archive, &tag)
	if err != nil {
		return v1.Config{}, fmt.Errorf("%s in %s: %w", ref, archive, err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return v1.Config{}, err
	}
	return cf.Config, nil
}
