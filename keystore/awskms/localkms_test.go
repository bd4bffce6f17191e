package awskms

import (
	"bytes"
	"context"
	"crypto/fips140"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	lkms "github.com/nsmithuk/local-kms/src"
	lkmsconfig "github.com/nsmithuk/local-kms/src/config"
	lkmsdata "github.com/nsmithuk/local-kms/src/data"
)

// The tests run against local-kms (github.com/nsmithuk/local-kms), a real AWS
// KMS emulator: its request handler, its key store (LevelDB in a temp dir),
// its AES-GCM envelope, served in-process on a 127.0.0.1 listener. The AWS
// SDK talks to it over HTTP exactly as it would to KMS.
//
// One shim sits in front of it, for two places where local-kms is laxer
// than AWS KMS and the conformance suite notices:
//   - AWS KMS refuses a Decrypt whose KeyId differs from the key the
//     ciphertext blob names (IncorrectKeyException); local-kms ignores the
//     blob's key ARN when KeyId is given, so a bit flipped there went
//     unnoticed.
//   - local-kms panics on a blob too short to hold a GCM nonce; AWS KMS
//     answers InvalidCiphertextException.

const (
	testRegion  = "eu-west-1"
	testAccount = "111122223333"
)

var lk struct {
	endpoint string
	admin    *kms.Client
	requests atomic.Int64
	n        atomic.Int64
}

func TestMain(m *testing.M) { os.Exit(testMain(m)) }

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "keywarden-local-kms-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	lkmsconfig.AWSRegion = testRegion
	lkmsconfig.AWSAccountId = testAccount
	lkmsconfig.DatabasePath = filepath.Join(dir, "db")
	db := lkmsdata.NewDatabase(lkmsconfig.DatabasePath)
	defer db.Close()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	srv := &http.Server{Handler: awsShim(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		lk.requests.Add(1)
		lkms.HandleRequest(w, r, db)
	}))}
	// local-kms plays AWS KMS, whose crypto runs in AWS's HSMs, not in
	// keywarden: its AES-GCM (cipher.NewGCM) is refused under
	// GODEBUG=fips140=only, so the server, and every goroutine it starts,
	// runs with enforcement lifted. The backend and the SDK under test do not.
	fips140.WithoutEnforcement(func() {
		go func() { _ = srv.Serve(ln) }()
	})
	defer srv.Close()
	lk.endpoint = "http://" + ln.Addr().String()
	lk.admin = kms.NewFromConfig(testAWSConfig(), func(o *kms.Options) { o.BaseEndpoint = aws.String(lk.endpoint) })
	return m.Run()
}

// testSecretKey is as long as a real AWS secret access key (40
// characters): SigV4 keys its first HMAC with "AWS4" and the secret, and
// under GODEBUG=fips140=only crypto/hmac refuses (panics on) keys under
// 112 bits, which a short fake secret would be.
const testSecretKey = "keywardenTestSecretAccessKeyForLocalKMS0"

// testAWSConfig has static credentials and nothing from the environment or
// ~/.aws, so the SDK never looks for instance metadata off this host.
func testAWSConfig() aws.Config {
	return aws.Config{
		Region:      testRegion,
		Credentials: credentials.NewStaticCredentialsProvider("AKIDKEYWARDENTEST", testSecretKey, ""),
	}
}

// awsShim makes local-kms answer like AWS KMS where the suite can tell
// (see the package comment above).
func awsShim(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Amz-Target") != "TrentService.Decrypt" {
			next.ServeHTTP(w, r)
			return
		}
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		var in struct {
			KeyId          string
			CiphertextBlob []byte
		}
		if json.Unmarshal(body, &in) == nil && in.KeyId != "" {
			// local-kms blob: len(arn) ‖ arn ‖ version (4) ‖ nonce (12) ‖ sealed.
			blob := in.CiphertextBlob
			if len(blob) < 1 || len(blob) < 1+int(blob[0])+4+12+16 {
				awsError(w, "InvalidCiphertextException", "")
				return
			}
			if arn := string(blob[1 : 1+int(blob[0])]); arn != in.KeyId {
				awsError(w, "IncorrectKeyException", "The key ID in the request does not identify a KMS key that can perform this operation.")
				return
			}
			_ = binary.LittleEndian // version bytes are checked by local-kms itself
		}
		next.ServeHTTP(w, r)
	})
}

func awsError(w http.ResponseWriter, code, msg string) {
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	w.WriteHeader(http.StatusBadRequest)
	_ = json.NewEncoder(w).Encode(map[string]string{"__type": code, "message": msg})
}

// newKey creates a symmetric key and returns its ARN.
func newKey(t testing.TB) string {
	t.Helper()
	out, err := lk.admin.CreateKey(context.Background(), &kms.CreateKeyInput{})
	if err != nil {
		t.Fatalf("CreateKey: %v", err)
	}
	return *out.KeyMetadata.Arn
}

// newAlias creates an alias to a new key and returns the alias ARN.
func newAlias(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("alias/kw-test-%d", lk.n.Add(1))
	if _, err := lk.admin.CreateAlias(context.Background(), &kms.CreateAliasInput{AliasName: aws.String(name), TargetKeyId: aws.String(newKey(t))}); err != nil {
		t.Fatalf("CreateAlias: %v", err)
	}
	return "arn:aws:kms:" + testRegion + ":" + testAccount + ":" + name
}

// retarget moves an alias to a new key: a rotation.
func retarget(ctx context.Context, t testing.TB, aliasARN string) error {
	_, err := lk.admin.UpdateAlias(ctx, &kms.UpdateAliasInput{
		AliasName:   aws.String(aliasARN[strings.Index(aliasARN, "alias/"):]),
		TargetKeyId: aws.String(newKey(t)),
	})
	return err
}

func uri(ref string, extra ...string) string {
	return Scheme + "://" + ref + "?" + strings.Join(append([]string{"endpoint=" + lk.endpoint}, extra...), "&")
}

func openURI(t testing.TB, u string) *Backend {
	t.Helper()
	cfg, err := parseURI(u)
	if err != nil {
		t.Fatal(err)
	}
	b, err := open(context.Background(), cfg, testAWSConfig())
	if err != nil {
		t.Fatalf("open %s: %v", u, err)
	}
	return b
}
