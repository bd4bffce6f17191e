// Command kmsctl is keywarden's operator CLI: root key versions, checks
// against a running plugin, storage migration, etcd audits, and the whole
// root key rotation.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"
	"sigs.k8s.io/yaml"

	"github.com/keywarden/keywarden/internal/buildinfo"
)

// Exit codes: 0 ok, 1 the operation failed, 2 usage error (including a
// missing --yes), 3 a check found a problem (unhealthy plugin, failed round
// trip, audit gate, objects that failed to migrate, a rotation surprise).
const (
	exitFailed  = 1
	exitUsage   = 2
	exitProblem = 3
)

type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func problem(format string, a ...any) error {
	return &exitError{code: exitProblem, err: fmt.Errorf(format, a...)}
}

// globals are what every command shares: the output format and the
// process's streams, injected so tests can drive commands in-process.
type globals struct {
	output string
	stdout io.Writer
	stderr io.Writer
	stdin  io.Reader
	// stdinTTY and stderrTTY say whether the streams are terminals: prompts
	// need the first, progress bars the second.
	stdinTTY, stderrTTY bool
	now                 func() time.Time
	// args is the command line, for resume hints.
	args []string
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	g := &globals{
		stdout: os.Stdout, stderr: os.Stderr, stdin: os.Stdin,
		stdinTTY:  term.IsTerminal(int(os.Stdin.Fd())),  //nolint:gosec // fd fits in int
		stderrTTY: term.IsTerminal(int(os.Stderr.Fd())), //nolint:gosec // fd fits in int
		now:       time.Now,
		args:      os.Args,
	}
	os.Exit(g.execute(ctx, os.Args[1:]))
}

// execute runs one command line and returns the process exit code.
func (g *globals) execute(ctx context.Context, args []string) int {
	stdout, stderr := g.stdout, g.stderr
	if g.now == nil {
		g.now = time.Now
	}
	if g.stdin == nil {
		g.stdin = strings.NewReader("")
	}
	root := newRoot(g)
	// cobra reports missing required flags, wrong argument counts and flag
	// group violations as plain errors before RunE: any error from before
	// RunE starts is a usage error.
	var started bool
	var mark func(c *cobra.Command)
	mark = func(c *cobra.Command) {
		if run := c.RunE; run != nil {
			c.RunE = func(c *cobra.Command, a []string) error { started = true; return run(c, a) }
		}
		for _, sub := range c.Commands() {
			mark(sub)
		}
	}
	mark(root)
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	fmt.Fprintln(stderr, "kmsctl:", err)
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	if isUsage(err) || !started {
		return exitUsage
	}
	return exitFailed
}

type usageError struct{ error }

func isUsage(err error) bool {
	var u usageError
	return errors.As(err, &u)
}

func newRoot(g *globals) *cobra.Command {
	root := &cobra.Command{
		Use:   "kmsctl",
		Short: "Operate keywarden: root keys, plugin status, storage migration, etcd audit, rotation",
		Long: `kmsctl operates keywarden, the Kubernetes KMS v2 plugin.

Rotating the root key (docs/rotation.md):
  kmsctl keys add / keys promote   new root version, then make it primary
  kmsctl migrate                   rewrite encrypted objects under the new key
  kmsctl audit                     prove from etcd that nothing uses the old one
  kmsctl keys disable / destroy    retire it
or add to audit at once, with checks between the steps (it never disables
or destroys, and its audit covers only the migrated resources):
  kmsctl rotate
or, once promotes happen (by hand or by the keystore), let the data follow
(pickup, migrate, audit; a long-running process with metrics):
  kmsctl follow

Exit codes: 0 ok; 1 failed; 2 usage error or confirmation missing;
3 a check found a problem.`,
		Version:       buildinfo.Version(),
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(*cobra.Command, []string) error {
			switch g.output {
			case "table", "json", "yaml":
				return nil
			}
			return usageError{fmt.Errorf("-o must be table, json or yaml, not %q", g.output)}
		},
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.PersistentFlags().StringVarP(&g.output, "output", "o", "table", "output format: table, json or yaml")
	// The first line stays cobra's "kmsctl version <v>"; then how it was built.
	root.SetVersionTemplate("kmsctl version {{.Version}}\n" + buildinfo.Details())
	root.AddCommand(newKeysCmd(g), newStatusCmd(g), newCheckCmd(g), newAuditCmd(g), newMigrateCmd(g), newRotateCmd(g), newFollowCmd(g), newRecoveryCmd(g), newRecoverCmd(g))
	return root
}

// print writes v as JSON or YAML (the same field names), or calls table to
// write it as a table.
func (g *globals) print(v any, table func(w *tabwriter.Writer)) error {
	switch g.output {
	case "json":
		enc := json.NewEncoder(g.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case "yaml":
		b, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		_, err = g.stdout.Write(b)
		return err
	}
	w := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
	table(w)
	return w.Flush()
}

// errNotConfirmed is returned when the operator answers no.
var errNotConfirmed = errors.New("not confirmed: nothing changed")

// confirm shows plan on stderr and asks for a yes. With --yes it goes
// ahead; on a terminal it asks; otherwise it refuses with a usage error,
// since a script must say --yes to mean it.
func (g *globals) confirm(plan string, yes bool) error {
	fmt.Fprint(g.stderr, plan)
	if yes {
		return nil
	}
	if !g.stdinTTY {
		return usageError{errors.New("stdin is not a terminal: pass --yes to confirm the change above")}
	}
	fmt.Fprint(g.stderr, "Proceed? [y/N] ")
	line, _ := bufio.NewReader(g.stdin).ReadString('\n')
	switch strings.ToLower(strings.TrimSpace(line)) {
	case "y", "yes":
		return nil
	}
	return errNotConfirmed
}
