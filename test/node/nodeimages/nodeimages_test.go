package nodeimages

import (
	"archive/tar"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

func TestImage(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "tool")
	if err := os.WriteFile(src, []byte("#!/bin/true\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	spec := Spec{
		Ref:        "registry.k8s.io/example:v1",
		Files:      append(Passwd(), File{Path: "/usr/local/bin/tool", Src: src}),
		Entrypoint: []string{"/usr/local/bin/tool"},
		User:       "65532:65532",
	}
	img, err := Image(spec)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != "linux" || cf.Architecture != "amd64" || cf.Config.User != "65532:65532" || len(cf.Config.Entrypoint) != 1 {
		t.Errorf("config %+v", cf.Config)
	}

	armSpec := spec
	armSpec.Arch = "arm64"
	arm, err := Image(armSpec)
	if err != nil {
		t.Fatal(err)
	}
	if acf, err := arm.ConfigFile(); err != nil || acf.Architecture != "arm64" || acf.OS != "linux" {
		t.Errorf("Arch arm64: config %+v, %v", acf, err)
	}

	// The layer: parents before children, modes as asked.
	got := map[string]*tar.Header{}
	var order []string
	tr := tar.NewReader(mutate.Extract(img))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got[h.Name] = h
		order = append(order, h.Name)
	}
	want := map[string]int64{"etc": 0o755, "etc/passwd": 0o644, "etc/group": 0o644, "usr": 0o755, "usr/local": 0o755, "usr/local/bin": 0o755, "usr/local/bin/tool": 0o755}
	for n, mode := range want {
		h := got[n]
		if h == nil {
			t.Errorf("%s missing from the layer (have %v)", n, order)
			continue
		}
		if h.Mode != mode {
			t.Errorf("%s mode %o, want %o", n, h.Mode, mode)
		}
	}
	if len(got) != len(want) {
		t.Errorf("layer has %v", order)
	}

	// Same input, same digest; the archive reads back as the same image.
	again, err := Image(spec)
	if err != nil {
		t.Fatal(err)
	}
	d1, _ := img.Digest()
	d2, _ := again.Digest()
	if d1 != d2 {
		t.Errorf("digests differ for the same spec: %s, %s", d1, d2)
	}
	archive := filepath.Join(dir, "images.tar")
	if err := WriteArchive(archive, spec); err != nil {
		t.Fatal(err)
	}
	tag, _ := name.NewTag(spec.Ref)
	back, err := tarball.ImageFromPath(archive, &tag)
	if err != nil {
		t.Fatal(err)
	}
	if d3, _ := back.Digest(); d3 != d1 {
		t.Errorf("archive image digest %s, want %s", d3, d1)
	}
	dst := filepath.Join(dir, "out")
	if err := ExtractFile(archive, spec.Ref, "/usr/local/bin/tool", dst); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(dst); err != nil || string(b) != "#!/bin/true\n" {
		t.Errorf("extracted %q, %v", b, err)
	}
	if err := ExtractFile(archive, spec.Ref, "/usr/local/bin/none", dst); err == nil {
		t.Error("extracting a missing file: no error")
	}
}

func TestBadSpecs(t *testing.T) {
	for _, files := range [][]File{
		{{Path: "relative", Data: []byte("x")}},
		{{Path: "/a", Data: nil}, {Path: "/a", Data: nil}},
		{{Path: "/a", Data: nil}, {Path: "/a/b", Data: nil}},
		{{Path: "/missing", Src: "/nonexistent/file"}},
	} {
		if _, err := Image(Spec{Ref: "x.example/y:z", Files: files}); err == nil {
			t.Errorf("files %+v: no error", files)
		}
	}
	if err := WriteArchive(filepath.Join(t.TempDir(), "a.tar"), Spec{Ref: "UPPER/case:tag"}); err == nil {
		t.Error("an invalid reference was accepted")
	}
}
