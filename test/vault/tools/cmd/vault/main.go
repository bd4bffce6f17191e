// Command vault is the Vault dev server keywarden's tests run against: Vault's
// own core (github.com/hashicorp/vault/vault), its HTTP API
// (github.com/hashicorp/vault/http), its server configuration and listeners
// (github.com/hashicorp/vault/command/server), in-memory storage, with the
// builtin plugins the tests mount and no others:
//
//	secrets: transit (and the core's own: cubbyhole, identity, sys, kv v1)
//	auth:    approle, cert, jwt, kubernetes (and the core's token store)
//
// Vault's own main links every builtin plugin, storage backend and CLI
// command (about 2,300 packages, among them Microsoft Graph's SDK and a
// dozen database drivers); this one needs about 1,400, which is most of a cold
// CI run's Vault build. It is still Vault v1.21.2's code serving the requests:
// only the command line is ours.
//
// Supported, as the tests call them:
//
//	vault server -dev [-dev-listen-address=H:P] [-dev-root-token-id=ID]
//	                  [-dev-no-store-token] [-config=FILE ...]
//	vault status      (VAULT_ADDR; exit 0 unsealed, 2 sealed, 1 error)
//	vault version
//
// Unlike `vault server -dev`, no kv-v2 mount is made at secret/ (the tests
// use none) and no token is stored (as with -dev-no-store-token).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"maps"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/cli"
	"github.com/hashicorp/go-hclog"
	jwtauth "github.com/hashicorp/vault-plugin-auth-jwt"
	kubeauth "github.com/hashicorp/vault-plugin-auth-kubernetes"
	"github.com/hashicorp/vault/builtin/credential/approle"
	"github.com/hashicorp/vault/builtin/credential/cert"
	"github.com/hashicorp/vault/builtin/logical/transit"
	"github.com/hashicorp/vault/command/server"
	"github.com/hashicorp/vault/helper/namespace"
	vaulthttp "github.com/hashicorp/vault/http"
	"github.com/hashicorp/vault/sdk/helper/consts"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/hashicorp/vault/sdk/physical/inmem"
	"github.com/hashicorp/vault/vault"
	"github.com/hashicorp/vault/version"
)

var (
	secrets = map[string]logical.Factory{"transit": transit.Factory}
	auths   = map[string]logical.Factory{
		"approle":    approle.Factory,
		"cert":       cert.Factory,
		"jwt":        jwtauth.Factory,
		"kubernetes": kubeauth.Factory,
	}
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: vault server -dev ... | status | version")
		os.Exit(1)
	}
	switch os.Args[1] {
	case "version", "-version", "--version", "-v":
		fmt.Printf("%s (keywarden's test server: %s; %s)\n", version.GetVersion().FullVersionNumber(true),
			strings.Join(registry{}.Keys(consts.PluginTypeSecrets), ", "),
			strings.Join(registry{}.Keys(consts.PluginTypeCredential), ", "))
	case "status":
		os.Exit(status())
	case "server":
		if err := serve(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "vault server:", err)
			os.Exit(1)
		}
	default:
		fmt.Fprintf(os.Stderr, "vault: %q is not supported by keywarden's test server (server -dev, status, version)\n", os.Args[1])
		os.Exit(1)
	}
}

// status asks /v1/sys/health, with `vault status`'s exit codes.
func status() int {
	addr := os.Getenv("VAULT_ADDR")
	if addr == "" {
		addr = "https://127.0.0.1:8200"
	}
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(strings.TrimSuffix(addr, "/") + "/v1/sys/health?standbyok=true")
	if err != nil {
		fmt.Fprintln(os.Stderr, "Error checking seal status:", err)
		return 1
	}
	_ = resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK, http.StatusTooManyRequests:
		fmt.Println("Initialized    true\nSealed         false")
		return 0
	case http.StatusServiceUnavailable, http.StatusNotImplemented:
		fmt.Println("Sealed         true")
		return 2
	}
	fmt.Fprintln(os.Stderr, "Error checking seal status: /v1/sys/health answered", resp.Status)
	return 1
}

// registry is the plugin catalog's BuiltinRegistry of the plugins above,
// so that sys/mounts and sys/auth find them by type, as they find Vault's
// own builtins.
type registry struct{}

func (registry) factories(t consts.PluginType) map[string]logical.Factory {
	switch t {
	case consts.PluginTypeCredential:
		return auths
	case consts.PluginTypeSecrets:
		return secrets
	}
	return nil
}

func (r registry) Contains(name string, t consts.PluginType) bool {
	_, ok := r.factories(t)[name]
	return ok
}

func (r registry) Get(name string, t consts.PluginType) (func() (interface{}, error), bool) {
	f, ok := r.factories(t)[name]
	if !ok {
		return nil, false
	}
	return func() (interface{}, error) { return f, nil }, true
}

func (r registry) Keys(t consts.PluginType) []string {
	return slices.Sorted(maps.Keys(r.factories(t)))
}

func (r registry) DeprecationStatus(name string, t consts.PluginType) (consts.DeprecationStatus, bool) {
	if r.Contains(name, t) {
		return consts.Supported, true
	}
	return consts.Unknown, false
}

func (registry) IsBuiltinEntPlugin(string, consts.PluginType) bool { return false }

type configFiles []string

func (c *configFiles) String() string     { return strings.Join(*c, ",") }
func (c *configFiles) Set(v string) error { *c = append(*c, v); return nil }

func serve(args []string) error {
	fs := flag.NewFlagSet("server", flag.ContinueOnError)
	dev := fs.Bool("dev", false, "in-memory, initialized and unsealed dev server (required)")
	listen := fs.String("dev-listen-address", "127.0.0.1:8200", "the dev listener's address (plain HTTP)")
	rootID := fs.String("dev-root-token-id", "", "the root token's ID")
	fs.Bool("dev-no-store-token", true, "accepted: this server never stores a token")
	var configs configFiles
	fs.Var(&configs, "config", "a Vault server configuration file whose listeners are added (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if !*dev {
		return errors.New("only -dev is supported")
	}

	// Vault's own dev configuration (one plain-HTTP listener, inmem
	// storage), merged with -config files as `vault server -dev -config`.
	config, err := server.DevConfig("inmem")
	if err != nil {
		return err
	}
	config.Listeners[0].Address = *listen
	for _, p := range configs {
		c, err := server.LoadConfigFile(p)
		if err != nil {
			return fmt.Errorf("config %s: %w", p, err)
		}
		config = config.Merge(c)
	}

	logger := hclog.New(&hclog.LoggerOptions{Name: "vault", Level: hclog.Info, Output: os.Stderr})
	phys, err := inmem.NewInmem(nil, logger)
	if err != nil {
		return err
	}
	core, err := vault.NewCore(&vault.CoreConfig{
		RawConfig:          config,
		Physical:           phys,
		StorageType:        "inmem",
		Logger:             logger,
		LogicalBackends:    secrets,
		CredentialBackends: auths,
		BuiltinRegistry:    registry{},
		DisableMlock:       true,
		DevToken:           *rootID,
	})
	if err != nil {
		return fmt.Errorf("core: %w", err)
	}
	defer func() { _ = core.Shutdown() }()

	// Listeners first, as Vault does: requests before unseal get 503.
	ui := &cli.BasicUi{Reader: os.Stdin, Writer: os.Stdout, ErrorWriter: os.Stderr}
	var servers []*http.Server
	errc := make(chan error, len(config.Listeners))
	for _, lc := range config.Listeners {
		ln, _, _, err := server.NewListener(lc, os.Stderr, ui)
		if err != nil {
			return fmt.Errorf("listener %s: %w", lc.Address, err)
		}
		h := vaulthttp.Handler.Handler(&vault.HandlerProperties{Core: core, ListenerConfig: lc})
		srv := &http.Server{
			Handler:           h,
			ReadHeaderTimeout: 10 * time.Second,
			ReadTimeout:       30 * time.Second,
			IdleTimeout:       5 * time.Minute,
			ErrorLog:          logger.StandardLogger(nil),
		}
		servers = append(servers, srv)
		go func() { errc <- srv.Serve(ln) }()
		scheme := "https"
		if lc.TLSDisable {
			scheme = "http"
		}
		fmt.Printf("==> listening on %s://%s\n", scheme, ln.Addr())
	}

	root, err := initDev(core, *rootID)
	if err != nil {
		return err
	}
	fmt.Printf("==> Vault %s dev server started (keywarden's test server)\nRoot Token: %s\n",
		version.GetVersion().VersionNumber(), root)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	select {
	case <-sig:
	case err = <-errc:
	}
	for _, s := range servers {
		_ = s.Close()
	}
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// initDev initializes and unseals the core with one Shamir share and, given
// an ID, replaces the generated root token by one of that ID: the steps of
// `vault server -dev`.
func initDev(core *vault.Core, rootID string) (string, error) {
	ctx := namespace.RootContext(context.Background())
	init, err := core.Initialize(ctx, &vault.InitParams{
		BarrierConfig: &vault.SealConfig{SecretShares: 1, SecretThreshold: 1, Name: "shamir"},
	})
	if err != nil {
		return "", fmt.Errorf("initialize: %w", err)
	}
	unsealed, err := core.Unseal(init.SecretShares[0])
	if err != nil {
		return "", fmt.Errorf("unseal: %w", err)
	}
	if !unsealed {
		return "", errors.New("unseal: still sealed")
	}
	for i := 0; ; i++ {
		active, _, _, err := core.Leader()
		if errors.Is(err, vault.ErrHANotEnabled) || (err == nil && active) {
			break
		}
		if err != nil {
			return "", fmt.Errorf("leader: %w", err)
		}
		if i == 50 {
			return "", errors.New("not active after 5 s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if rootID == "" {
		return init.RootToken, nil
	}
	req := &logical.Request{
		Operation:   logical.UpdateOperation,
		ClientToken: init.RootToken,
		Path:        "auth/token/create",
		Data: map[string]interface{}{
			"id": rootID, "policies": []string{"root"}, "no_parent": true, "no_default_policy": true,
		},
	}
	resp, err := core.HandleRequest(ctx, req)
	if err != nil {
		return "", fmt.Errorf("create the root token: %w", err)
	}
	if resp == nil || resp.Auth == nil {
		return "", errors.New("create the root token: no auth in the response")
	}
	req.Path, req.Data = "auth/token/revoke-self", nil
	if _, err := core.HandleRequest(ctx, req); err != nil {
		return "", fmt.Errorf("revoke the initial root token: %w", err)
	}
	return resp.Auth.ClientToken, nil
}
