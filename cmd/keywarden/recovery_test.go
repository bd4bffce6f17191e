package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/keywarden/keywarden/keystore"
	"github.com/keywarden/keywarden/keystore/file"
	"github.com/keywarden/keywarden/keystore/recovery"
	"github.com/keywarden/keywarden/kms/envelope"
)

// keywarden takes the public recovery keyset, seals every new local KEK
// to it, and refuses the private one.
func TestRunRecoveryPublicKey(t *testing.T) {
	dir := t.TempDir()
	ks := filepath.Join(dir, "keyset.json")
	if _, err := file.Init(ks); err != nil {
		t.Fatal(err)
	}
	priv, err := recovery.New()
	if errors.Is(err, recovery.ErrFIPSOnly) {
		t.Skip("no recovery key under GODEBUG=fips140=only (X25519 is not FIPS approved; keystore/recovery's TestFIPSOnly checks the refusal)")
	}
	if err != nil {
		t.Fatal(err)
	}
	pubJSON, err := priv.MarshalPublic()
	if err != nil {
		t.Fatal(err)
	}
	privJSON, err := priv.Marshal(nil, recovery.DefaultKDF())
	if err != nil {
		t.Fatal(err)
	}
	pubPath, privPath := filepath.Join(dir, "recovery.pub.json"), filepath.Join(dir, "recovery.private.json")
	for p, b := range map[string][]byte{pubPath: pubJSON, privPath: privJSON} {
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	sock := filepath.Join(dir, "run", "kms.sock")
	base := []string{"--listen", "unix://" + sock, "--metrics-addr", "", "--keystore", "file://" + ks}

	err = run(context.Background(), append(base, "--recovery-public-key", "file://"+privPath), io.Discard, io.Discard)
	if !errors.Is(err, keystore.ErrConfig) || !strings.Contains(err.Error(), "PRIVATE") {
		t.Fatalf("run with the private keyset: %v", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var stderr syncBuffer
	go func() {
		done <- run(ctx, append(base, "--recovery-public-key", pubPath), io.Discard, &stderr)
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := kmsapi.NewKeyManagementServiceClient(conn)
	var enc *kmsapi.EncryptResponse
	for start := time.Now(); ; time.Sleep(20 * time.Millisecond) {
		cctx, ccancel := context.WithTimeout(ctx, time.Second)
		enc, err = c.Encrypt(cctx, &kmsapi.EncryptRequest{Plaintext: bytes.Repeat([]byte{1}, 32), Uid: "test"})
		ccancel()
		if err == nil || time.Since(start) > 10*time.Second {
			break
		}
	}
	if err != nil {
		t.Fatalf("Encrypt: %v\n%s", err, stderr.String())
	}
	a, err := envelope.DecodeAnnotation(enc.Annotations[envelope.AnnotationKey])
	if err != nil || len(a.Copies) != 2 || a.Copies[1].Backend != recovery.Name || a.Copies[1].KeyID != priv.KeyID() || a.KeyID != enc.KeyId {
		t.Fatalf("annotation %+v (%v)", a, err)
	}
	if !strings.Contains(stderr.String(), `"recovery_key":"`+priv.KeyID()+`"`) {
		t.Fatalf("start-up log does not name the recovery key:\n%s", stderr.String())
	}
}
