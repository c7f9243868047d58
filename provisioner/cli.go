package provisioner

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/palisade-cc/palisade/provisioner/api"
	"github.com/palisade-cc/palisade/provisioner/config"
	"github.com/palisade-cc/palisade/provisioner/inventory"
)

// CLI is the `provisioner` command. Its fields default to the process's
// own streams and environment; tests set them.
type CLI struct {
	Stdout, Stderr io.Writer
	Getenv         func(string) string
	// Serve runs the daemon; default Run. Tests never call serve.
	Serve func(ctx context.Context, cfg config.Config) error
}

// Main runs the command line and returns the exit status.
func Main(args []string) int {
	c := &CLI{Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv}
	return c.Run(context.Background(), args)
}

const usage = `provisioner — PXE/HTTP boot server with a machine inventory (docs/provisioner.md)

Usage:
  provisioner serve --config FILE
  provisioner config init [--out FILE]
  provisioner machines list|show|accept|assign|forget|report …
  provisioner profiles list|show|set|delete …
  provisioner images add|list …

Client commands talk to the API: --server URL (default $PALISADE_PROVISIONER_SERVER
or http://127.0.0.1:8081), token from --token-file FILE, else the token itself in $PALISADE_PROVISIONER_TOKEN.
Every command takes --help.
`

type command struct {
	args    string // synopsis after the command name
	help    string
	example string
	run     func(c *CLI, ctx context.Context, fs *flag.FlagSet, args []string) error
	flags   func(fs *flag.FlagSet)
	nargs   int // exact positional arguments, -1 = any
	client  bool
}

func (c *CLI) commands() map[string]*command {
	return map[string]*command{
		"serve":       {"--config FILE", "Run DHCP, TFTP, HTTP boot, the API, the web UI and /metrics.", "provisioner serve --config /etc/palisade/provisioner.json", (*CLI).serve, func(fs *flag.FlagSet) { fs.String("config", "", "configuration file (required)") }, 0, false},
		"config init": {"[--out FILE]", "Write a commented default configuration.", "provisioner config init --out /etc/palisade/provisioner.json", (*CLI).configInit, func(fs *flag.FlagSet) { fs.String("out", "", "write here instead of stdout (never overwrites)") }, 0, false},
		"machines list": {"[--state S] [--json]", "List machines.", "provisioner machines list --state discovered", (*CLI).machinesList, func(fs *flag.FlagSet) {
			fs.String("state", "", "only machines in this state")
			fs.Bool("json", false, "JSON output")
		}, 0, true},
		"machines show":   {"MAC [--json]", "Show one machine and its boot timeline.", "provisioner machines show 52:54:00:12:34:56", (*CLI).machinesShow, func(fs *flag.FlagSet) { fs.Bool("json", false, "JSON output") }, 1, true},
		"machines accept": {"MAC [--profile P]", "Accept a machine so it gets its image (a MAC never seen is pre-accepted).", "provisioner machines accept 52:54:00:12:34:56 --profile worker", (*CLI).machinesAccept, func(fs *flag.FlagSet) { fs.String("profile", "", "assign this profile too") }, 1, true},
		"machines assign": {"MAC PROFILE", "Assign a profile to a machine.", "provisioner machines assign 52:54:00:12:34:56 control-plane", (*CLI).machinesAssign, nil, 2, true},
		"machines forget": {"MAC", "Remove a machine and its timeline.", "provisioner machines forget 52:54:00:12:34:56", (*CLI).machinesForget, nil, 1, true},
		"machines report": {"MAC STATE [--detail TEXT]", "Record a state reported by the cluster: attested, joined or failed.", "provisioner machines report 52:54:00:12:34:56 joined --detail node-7", (*CLI).machinesReport, func(fs *flag.FlagSet) { fs.String("detail", "", "free text") }, 2, true},
		"profiles list":   {"[--json]", "List profiles.", "provisioner profiles list", (*CLI).profilesList, func(fs *flag.FlagSet) { fs.Bool("json", false, "JSON output") }, 0, true},
		"profiles show":   {"NAME", "Show a profile as JSON.", "provisioner profiles show worker", (*CLI).profilesShow, nil, 1, true},
		"profiles set":    {"NAME --image F --platform P --role R [--image-arm64 F] [--keyd-hint H:P]… [--cluster ID]", "Create or replace a profile. Keyd hints and the cluster reach the node as DHCP option 224 (authoritative mode).", "provisioner profiles set worker --image palisade-uki.efi --platform tpm --role worker --keyd-hint 10.0.0.2:7443 --cluster prod", (*CLI).profilesSet, profileFlags, 1, true},
		"profiles delete": {"NAME", "Delete a profile no machine uses.", "provisioner profiles delete old", (*CLI).profilesDelete, nil, 1, true},
		"images add": {"FILE [--name NAME]", "Copy an image into the images directory (checked by SHA-256).", "provisioner images add out/palisade-uki.efi", (*CLI).imagesAdd, func(fs *flag.FlagSet) {
			fs.String("name", "", "name in the images directory (default: the file's base name)")
		}, 1, true},
		"images list":       {"[--json]", "List images with size and SHA-256.", "provisioner images list", (*CLI).imagesList, func(fs *flag.FlagSet) { fs.Bool("json", false, "JSON output") }, 0, true},
		"machines timeline": {"MAC", "Print a machine's boot timeline.", "provisioner machines timeline 52:54:00:12:34:56", (*CLI).machinesTimeline, nil, 1, true},
	}
}

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(s string) error { *m = append(*m, s); return nil }

func profileFlags(fs *flag.FlagSet) {
	fs.String("image", "", "x64 UKI file name in the images directory (required)")
	fs.String("image-arm64", "", "arm64 UKI file name")
	fs.String("platform", "tpm", "tpm, sev-snp or tdx")
	fs.String("role", "worker", "control-plane or worker")
	fs.Var(&multi{}, "keyd-hint", "keyd address host:port handed to the node (repeatable, at most 16)")
	fs.String("cluster", "", "cluster ID handed to the node (1-64 of A-Za-z0-9._-)")
}

// Run runs one command line.
func (c *CLI) Run(ctx context.Context, args []string) int {
	if c.Getenv == nil {
		c.Getenv = os.Getenv
	}
	cmds := c.commands()
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(c.Stdout, usage)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	name := args[0]
	rest := args[1:]
	cmd, ok := cmds[name]
	if !ok && len(args) > 1 {
		name = args[0] + " " + args[1]
		rest = args[2:]
		cmd, ok = cmds[name]
	}
	if !ok {
		fmt.Fprintf(c.Stderr, "provisioner: unknown command %q\n\n%s", strings.Join(args[:min(2, len(args))], " "), usage)
		return 2
	}
	fs := flag.NewFlagSet("provisioner "+name, flag.ContinueOnError)
	fs.SetOutput(c.Stderr)
	if cmd.flags != nil {
		cmd.flags(fs)
	}
	if cmd.client {
		fs.String("server", "", "API URL (default $PALISADE_PROVISIONER_SERVER or http://127.0.0.1:8081)")
		fs.String("token-file", "", "file holding the API token (without it: the token itself from $PALISADE_PROVISIONER_TOKEN)")
	}
	fs.Usage = func() {
		fmt.Fprintf(c.Stderr, "Usage: provisioner %s %s\n\n%s\n\nExample:\n  %s\n\nFlags:\n", name, cmd.args, cmd.help, cmd.example)
		fs.PrintDefaults()
	}
	pos, err := parseInterleaved(fs, rest)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		return 2
	}
	if cmd.nargs >= 0 && len(pos) != cmd.nargs {
		fmt.Fprintf(c.Stderr, "provisioner %s: want %d argument(s), got %d\n", name, cmd.nargs, len(pos))
		fs.Usage()
		return 2
	}
	if err := cmd.run(c, ctx, fs, pos); err != nil {
		fmt.Fprintf(c.Stderr, "provisioner %s: %v\n", name, err)
		return 1
	}
	return 0
}

// parseInterleaved lets flags follow positional arguments
// ("accept MAC --profile P"), which flag.Parse alone stops at.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func str(fs *flag.FlagSet, name string) string { return fs.Lookup(name).Value.String() }
func flagBool(fs *flag.FlagSet, name string) bool {
	return fs.Lookup(name).Value.String() == "true"
}

func (c *CLI) client(fs *flag.FlagSet) (*api.Client, error) {
	server := str(fs, "server")
	if server == "" {
		server = c.Getenv("PALISADE_PROVISIONER_SERVER")
	}
	if server == "" {
		server = "http://127.0.0.1:8081"
	}
	var tok string
	if f := str(fs, "token-file"); f != "" {
		t, err := config.ReadTokenFile(f)
		if err != nil {
			return nil, fmt.Errorf("--token-file: %w", err)
		}
		tok = t
	} else if tok = strings.TrimSpace(c.Getenv("PALISADE_PROVISIONER_TOKEN")); tok == "" {
		return nil, errors.New("no token: pass --token-file FILE or set PALISADE_PROVISIONER_TOKEN")
	}
	return &api.Client{Base: server, Token: tok}, nil
}

func (c *CLI) serve(ctx context.Context, fs *flag.FlagSet, _ []string) error {
	path := str(fs, "config")
	if path == "" {
		return errors.New("--config FILE is required (provisioner config init writes one)")
	}
	cfg, err := config.Load(path)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	if c.Serve != nil {
		return c.Serve(ctx, cfg)
	}
	return Run(ctx, cfg, NewLogger(cfg.Log))
}

func (c *CLI) configInit(_ context.Context, fs *flag.FlagSet, _ []string) error {
	out := str(fs, "out")
	if out == "" {
		_, err := io.WriteString(c.Stdout, config.Template)
		return err
	}
	f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.WriteString(f, config.Template); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func (c *CLI) printJSON(v any) error {
	enc := json.NewEncoder(c.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func ago(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := time.Since(t).Round(time.Second)
	switch {
	case d < time.Minute:
		return d.String() + " ago"
	case d < 48*time.Hour:
		return d.Truncate(time.Minute).String() + " ago"
	}
	return t.Format("2006-01-02")
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func (c *CLI) machinesList(ctx context.Context, fs *flag.FlagSet, _ []string) error {
	cl, err := c.client(fs)
	if err != nil {
		return err
	}
	ms, err := cl.Machines(ctx, str(fs, "state"))
	if err != nil {
		return err
	}
	if flagBool(fs, "json") {
		return c.printJSON(ms)
	}
	tw := tabwriter.NewWriter(c.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MAC\tSTATE\tPROFILE\tARCH\tIP\tLAST SEEN")
	for _, m := range ms {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", m.MAC, m.State, dash(m.Profile), m.ArchName, dash(m.IP), ago(m.LastSeen))
	}
	return tw.Flush()
}

func (c *CLI) machinesShow(ctx context.Context, fs *flag.FlagSet, args []string) error {
	cl, err := c.client(fs)
	if err != nil {
		return err
	}
	m, err := cl.Machine(ctx, args[0])
	if err != nil {
		return err
	}
	ev, err := cl.Timeline(ctx, args[0])
	if err != nil {
		return err
	}
	if flagBool(fs, "json") {
		return c.printJSON(struct {
			inventory.Machine
			Events []inventory.Event `json:"events"`
		}{m, ev})
	}
	tw := tabwriter.NewWriter(c.Stdout, 0, 4, 2, ' ', 0)
	for _, kv := range [][2]string{
		{"MAC", m.MAC}, {"UUID", dash(m.UUID)}, {"Arch", fmt.Sprintf("%s (%d)", m.ArchName, m.Arch)},
		{"State", fmt.Sprintf("%s since %s", m.State, m.StateSince.Format(time.RFC3339))},
		{"Profile", dash(m.Profile)}, {"Accepted by", dash(m.AcceptedBy)}, {"IP", dash(m.IP)},
		{"Vendor class", dash(m.VendorClass)}, {"User class", dash(m.UserClass)}, {"Relay", dash(m.Relay)},
		{"First seen", m.FirstSeen.Format(time.RFC3339)}, {"Last seen", m.LastSeen.Format(time.RFC3339)},
		{"Last boot", dash(m.LastBoot)},
	} {
		fmt.Fprintf(tw, "%s:\t%s\n", kv[0], kv[1])
	}
	tw.Flush()
	fmt.Fprintln(c.Stdout)
	return c.writeTimeline(ev)
}

func (c *CLI) writeTimeline(ev []inventory.Event) error {
	tw := tabwriter.NewWriter(c.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tKIND\tDETAIL")
	for _, e := range ev {
		var parts []string
		for _, p := range []string{e.Detail, e.File} {
			if p != "" {
				parts = append(parts, p)
			}
		}
		if e.Bytes > 0 {
			parts = append(parts, fmt.Sprintf("%d bytes", e.Bytes))
		}
		if e.Took > 0 {
			parts = append(parts, e.Took.Round(time.Millisecond).String())
		}
		if e.Remote != "" {
			parts = append(parts, "from "+e.Remote)
		}
		if e.State != "" {
			parts = append(parts, "→ "+string(e.State))
		}
		if e.Error != "" {
			parts = append(parts, "error: "+e.Error)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", e.Time.Format(time.RFC3339), e.Kind, strings.Join(parts, " · "))
	}
	return tw.Flush()
}

func (c *CLI) machinesTimeline(ctx context.Context, fs *flag.FlagSet, args []string) error {
	cl, err := c.client(fs)
	if err != nil {
		return err
	}
	ev, err := cl.Timeline(ctx, args[0])
	if err != nil {
		return err
	}
	return c.writeTimeline(ev)
}

func (c *CLI) machinesAccept(ctx context.Context, fs *flag.FlagSet, args []string) error {
	cl, err := c.client(fs)
	if err != nil {
		return err
	}
	m, err := cl.Accept(ctx, args[0], str(fs, "profile"))
	if err != nil {
		return err
	}
	fmt.Fprintf(c.Stdout, "%s %s (profile %s)\n", m.MAC, m.State, dash(m.Profile))
	return nil
}

func (c *CLI) machinesAssign(ctx context.Context, fs *flag.FlagSet, args []string) error {
	cl, err := c.client(fs)
	if err != nil {
		return err
	}
	m, err := cl.Assign(ctx, args[0], args[1])
	if err != nil {
		return err
	}
	fmt.Fprintf(c.Stdout, "%s profile %s\n", m.MAC, m.Profile)
	return nil
}

func (c *CLI) machinesForget(ctx context.Context, fs *flag.FlagSet, args []string) error {
	cl, err := c.client(fs)
	if err != nil {
		return err
	}
	if err := cl.Forget(ctx, args[0]); err != nil {
		return err
	}
	fmt.Fprintf(c.Stdout, "%s forgotten\n", args[0])
	return nil
}

func (c *CLI) machinesReport(ctx context.Context, fs *flag.FlagSet, args []string) error {
	cl, err := c.client(fs)
	if err != nil {
		return err
	}
	m, err := cl.Report(ctx, args[0], inventory.State(args[1]), str(fs, "detail"))
	if err != nil {
		return err
	}
	fmt.Fprintf(c.Stdout, "%s %s\n", m.MAC, m.State)
	return nil
}

func (c *CLI) profilesList(ctx context.Context, fs *flag.FlagSet, _ []string) error {
	cl, err := c.client(fs)
	if err != nil {
		return err
	}
	ps, err := cl.Profiles(ctx)
	if err != nil {
		return err
	}
	if flagBool(fs, "json") {
		return c.printJSON(ps)
	}
	tw := tabwriter.NewWriter(c.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tIMAGE\tPLATFORM\tROLE\tKEYD HINTS\tCLUSTER")
	for _, p := range ps {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", p.Name, p.Image, p.Platform, p.Role, dash(strings.Join(p.KeydHints, ",")), dash(p.Cluster))
	}
	return tw.Flush()
}

func (c *CLI) profilesShow(ctx context.Context, fs *flag.FlagSet, args []string) error {
	cl, err := c.client(fs)
	if err != nil {
		return err
	}
	p, err := cl.Profile(ctx, args[0])
	if err != nil {
		return err
	}
	return c.printJSON(p)
}

func (c *CLI) profilesSet(ctx context.Context, fs *flag.FlagSet, args []string) error {
	p := inventory.Profile{
		Name: args[0], Image: str(fs, "image"), ImageARM64: str(fs, "image-arm64"),
		Platform: str(fs, "platform"), Role: str(fs, "role"),
		KeydHints: []string(*fs.Lookup("keyd-hint").Value.(*multi)),
		Cluster:   str(fs, "cluster"),
	}
	// Checked here too (the server checks again), so a typo is named by
	// its flag before anything is sent.
	if err := p.Validate(); err != nil {
		var fe *inventory.FieldError
		if errors.As(err, &fe) {
			return fmt.Errorf("%s: %s", profileFlag(fe.Field), fe.Msg)
		}
		return err
	}
	cl, err := c.client(fs)
	if err != nil {
		return err
	}
	if err := cl.PutProfile(ctx, p); err != nil {
		return err
	}
	fmt.Fprintf(c.Stdout, "profile %s saved\n", p.Name)
	return nil
}

func (c *CLI) profilesDelete(ctx context.Context, fs *flag.FlagSet, args []string) error {
	cl, err := c.client(fs)
	if err != nil {
		return err
	}
	if err := cl.DeleteProfile(ctx, args[0]); err != nil {
		return err
	}
	fmt.Fprintf(c.Stdout, "profile %s deleted\n", args[0])
	return nil
}

func (c *CLI) imagesAdd(ctx context.Context, fs *flag.FlagSet, args []string) error {
	cl, err := c.client(fs)
	if err != nil {
		return err
	}
	name := str(fs, "name")
	if name == "" {
		name = filepath.Base(args[0])
	}
	f, err := os.Open(args[0])
	if err != nil {
		return err
	}
	defer f.Close()
	// Hash locally first, so the server can refuse a copy that changed on
	// the way.
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	img, err := cl.AddImage(ctx, name, f, hex.EncodeToString(h.Sum(nil)))
	if err != nil {
		return err
	}
	fmt.Fprintf(c.Stdout, "%s %d bytes sha256:%s\n", img.Name, img.Size, img.SHA256)
	return nil
}

func (c *CLI) imagesList(ctx context.Context, fs *flag.FlagSet, _ []string) error {
	cl, err := c.client(fs)
	if err != nil {
		return err
	}
	l, err := cl.Images(ctx)
	if err != nil {
		return err
	}
	if flagBool(fs, "json") {
		return c.printJSON(l)
	}
	tw := tabwriter.NewWriter(c.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSIZE\tSHA256\tMODIFIED")
	for _, i := range l {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", i.Name, i.Size, i.SHA256, i.Modified.Format(time.RFC3339))
	}
	return tw.Flush()
}

// profileFlag names the flag (or argument) behind a Profile field.
func profileFlag(field string) string {
	field, _, _ = strings.Cut(field, "[")
	switch field {
	case "name":
		return "NAME"
	case "keyd_hints":
		return "--keyd-hint"
	}
	return "--" + strings.ReplaceAll(field, "_", "-")
}
