// Package provisioner wires DHCP, TFTP, HTTP boot, the inventory, the API,
// the web UI and /metrics into one service; it is outside the trusted base.
package provisioner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/palisade-cc/palisade/provisioner/api"
	"github.com/palisade-cc/palisade/provisioner/config"
	"github.com/palisade-cc/palisade/provisioner/dhcp"
	"github.com/palisade-cc/palisade/provisioner/httpboot"
	"github.com/palisade-cc/palisade/provisioner/inventory"
	"github.com/palisade-cc/palisade/provisioner/nodestatus"
	"github.com/palisade-cc/palisade/provisioner/tftp"
	"github.com/palisade-cc/palisade/provisioner/ui"
)

// Provisioner is a configured, bound service. New opens and binds
// everything; Serve runs it until the context ends.
type Provisioner struct {
	cfg      config.Config
	log      *slog.Logger
	reg      *prometheus.Registry
	inv      *inventory.Store
	dhcp     *dhcp.Server
	tftp     *tftp.Server
	apiSrv   *http.Server
	apiLn    net.Listener
	http     *httpboot.Server
	shutdown time.Duration
}

// Run is New followed by Serve.
func Run(ctx context.Context, cfg config.Config, log *slog.Logger) error {
	p, err := New(cfg, log)
	if err != nil {
		return err
	}
	return p.Serve(ctx)
}

// NewLogger builds the logger the configuration asks for, on stderr.
func NewLogger(c config.Log) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(c.Level))
	o := &slog.HandlerOptions{Level: lvl}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, o))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, o))
}

// New validates cfg, opens the inventory and binds every listener. On error
// everything already opened is released.
func New(cfg config.Config, log *slog.Logger) (_ *Provisioner, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	admin, readOnly, err := cfg.Tokens()
	if err != nil {
		return nil, err
	}
	p := &Provisioner{cfg: cfg, log: log, reg: prometheus.NewRegistry(), shutdown: 10 * time.Second}
	defer func() {
		if err != nil {
			p.closeAll()
		}
	}()
	p.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data_dir: %w", err)
	}
	images, err := api.NewImages(cfg.ImagesDir)
	if err != nil {
		return nil, fmt.Errorf("images_dir: %w", err)
	}
	// HTTP boot binds first: with port 0 the boot URL is known only then.
	httpObs := &httpObserver{log: log}
	if cfg.HTTP != nil {
		p.http, err = httpboot.New(*cfg.HTTP, log.With("server", "http"), httpObs, p.reg)
		if err != nil {
			return nil, fmt.Errorf("http: %w", err)
		}
		if cfg.Boot.HTTPBase == "" {
			// Only a concrete address can be handed to clients.
			if a := p.http.Addr(); !a.Addr().IsUnspecified() {
				cfg.Boot.HTTPBase = "http://" + a.String()
			} else {
				log.Warn("boot.http_base unset and http.listen has no concrete address: HTTP boot clients get no answer")
			}
		}
	}
	// Nodes report their boot status to the boot listener (it is on the
	// boot network, where they already fetch images); option 224 tells
	// them where, as status=http://HOST:PORT.
	statusURL := ""
	if p.http != nil {
		if statusURL = inventory.StatusURL(p.http.Addr(), cfg.Boot.HTTPBase); statusURL == "" {
			log.Warn("no concrete address for the boot listener: nodes are not told where to report their status")
		}
	}
	p.inv, err = inventory.Open(filepath.Join(cfg.DataDir, "inventory.db"), inventory.Options{
		Rules:            cfg.Accept,
		DiscoveryProfile: cfg.Boot.DiscoveryProfile,
		DefaultProfile:   cfg.Boot.DefaultProfile,
		BIOSFile:         cfg.Boot.BIOSFile,
		HTTPBase:         cfg.Boot.HTTPBase,
		StatusURL:        statusURL,
		Logger:           log,
		Registerer:       p.reg,
	})
	if err != nil {
		return nil, err
	}
	httpObs.inv = p.inv // before any Serve: no request can have run yet
	if p.http != nil {
		ns, err := nodestatus.New(p.inv, nodestatus.Options{Logger: log.With("server", "node-status"), Registerer: p.reg})
		if err != nil {
			return nil, fmt.Errorf("node status: %w", err)
		}
		p.http.HandleExact(nodestatus.Path, ns)
	}
	for _, pr := range cfg.Profiles {
		if err := p.inv.PutProfile(pr); err != nil {
			return nil, fmt.Errorf("profiles: %s: %w", pr.Name, err)
		}
	}
	// Profiles the configuration refers to must exist now, or every boot
	// of the machines concerned would silently get no answer.
	refs := map[string]string{"boot.default_profile": cfg.Boot.DefaultProfile, "boot.discovery_profile": cfg.Boot.DiscoveryProfile}
	for i, r := range cfg.Accept {
		refs[fmt.Sprintf("accept[%d].profile", i)] = r.Profile
	}
	for field, name := range refs {
		if name == "" {
			continue
		}
		if _, err := p.inv.Profile(name); err != nil {
			return nil, fmt.Errorf("config: %s: profile %q is neither in the file nor in the inventory", field, name)
		}
	}

	apiHandler, err := api.New(p.inv, api.Options{AdminToken: admin, ReadOnlyToken: readOnly, Images: images, Logger: log})
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/api/", apiHandler)
	// /metrics carries counts only (no MACs, no tokens), so Prometheus can
	// scrape it without a token, as is usual.
	mux.Handle("GET /metrics", promhttp.HandlerFor(p.reg, promhttp.HandlerOpts{Registry: p.reg}))
	mux.Handle("/", ui.Handler())
	p.apiLn, err = net.Listen("tcp", cfg.API.Listen)
	if err != nil {
		return nil, fmt.Errorf("api.listen: %w", err)
	}
	p.apiSrv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}

	if cfg.TFTP != nil {
		p.tftp, err = tftp.New(*cfg.TFTP, log.With("server", "tftp"), tftpObserver{p.inv, log}, p.reg)
		if err != nil {
			return nil, fmt.Errorf("tftp: %w", err)
		}
	}
	if cfg.DHCP != nil {
		p.dhcp, err = dhcp.New(*cfg.DHCP, policy{p.inv}, p.reg, log.With("server", "dhcp"))
		if err != nil {
			return nil, fmt.Errorf("dhcp: %w", err)
		}
	}
	return p, nil
}

// closeAll releases what New opened when Serve will not run.
func (p *Provisioner) closeAll() {
	if p.dhcp != nil {
		p.dhcp.Close()
	}
	if p.tftp != nil {
		// tftp has no Close: Serve with a finished context releases it.
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		p.tftp.Serve(ctx)
	}
	if p.apiLn != nil {
		p.apiLn.Close()
	}
	if p.http != nil {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		p.http.Serve(ctx)
	}
	if p.inv != nil {
		p.inv.Close()
	}
}

// Addrs are the bound addresses, for tests and the startup log.
type Addrs struct {
	API  net.Addr
	HTTP netip.AddrPort // zero without an http section
	TFTP netip.AddrPort
	DHCP []net.Addr
}

// Addrs returns the bound addresses.
func (p *Provisioner) Addrs() Addrs {
	a := Addrs{API: p.apiLn.Addr()}
	if p.http != nil {
		a.HTTP = p.http.Addr()
	}
	if p.tftp != nil {
		a.TFTP = p.tftp.Addr()
	}
	if p.dhcp != nil {
		a.DHCP = p.dhcp.Addrs()
	}
	return a
}

// Inventory is the running inventory (for tests and the storm benchmark).
func (p *Provisioner) Inventory() *inventory.Store { return p.inv }

// Serve runs every server until ctx ends or one fails, then shuts all down
// gracefully (HTTP servers finish in-flight requests for up to 10 s) and
// closes the inventory last, after the servers that write to it stopped.
func (p *Provisioner) Serve(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	a := p.Addrs()
	p.log.Info("provisioner serving", "api", a.API, "http", a.HTTP, "tftp", a.TFTP, "dhcp", a.DHCP)
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	fail := func(name string, err error) {
		if err == nil || errors.Is(err, http.ErrServerClosed) {
			return
		}
		mu.Lock()
		errs = append(errs, fmt.Errorf("%s: %w", name, err))
		mu.Unlock()
		p.log.Error("server failed, shutting down", "server", name, "err", err)
		cancel()
	}
	httpServe := func(name string, s *http.Server, ln net.Listener) {
		wg.Go(func() { fail(name, s.Serve(ln)) })
		wg.Go(func() {
			<-ctx.Done()
			sctx, c := context.WithTimeout(context.Background(), p.shutdown)
			defer c()
			if err := s.Shutdown(sctx); err != nil {
				s.Close()
			}
		})
	}
	httpServe("api", p.apiSrv, p.apiLn)
	if p.http != nil {
		wg.Go(func() { fail("http", p.http.Serve(ctx)) })
	}
	if p.tftp != nil {
		wg.Go(func() { fail("tftp", p.tftp.Serve(ctx)) })
	}
	if p.dhcp != nil {
		wg.Go(func() { fail("dhcp", p.dhcp.Serve(ctx)) })
	}
	wg.Wait()
	if err := p.inv.Close(); err != nil {
		errs = append(errs, fmt.Errorf("inventory: %w", err))
	}
	p.log.Info("provisioner stopped")
	return errors.Join(errs...)
}

// policy adapts the inventory to dhcp.Policy.
type policy struct{ inv *inventory.Store }

func (p policy) Boot(ctx context.Context, c dhcp.Client) (dhcp.Boot, error) {
	a, err := p.inv.Boot(ctx, inventory.Request{
		MAC: c.MAC, UUID: c.UUID, Arch: c.Arch, VendorClass: c.VendorClass, UserClass: c.UserClass,
		Relay: c.Relay, PXE: c.PXE, HTTPBoot: c.HTTPBoot, MessageType: c.MessageType,
	})
	if err != nil {
		return dhcp.Boot{}, err
	}
	b := dhcp.Boot{TFTPFile: a.TFTPFile, HTTPURL: a.HTTPURL}
	if a.Hints != "" {
		b.Hints = []byte(a.Hints)
	}
	return b, nil
}

// Leased records the address a machine was acknowledged, so its TFTP and
// HTTP transfers are attributed to it exactly, even when boots overlap.
func (p policy) Leased(mac net.HardwareAddr, ip netip.Addr) { p.inv.LearnAddress(mac, ip) }

// tftpObserver adapts the inventory to tftp.Observer.
type tftpObserver struct {
	inv *inventory.Store
	log *slog.Logger
}

func (o tftpObserver) Transfer(ev tftp.Event) {
	err := o.inv.RecordTransfer(inventory.Transfer{
		Remote: ev.Remote.Addr(), File: ev.File, Bytes: ev.Bytes, Started: ev.Started,
		Duration: ev.Duration, Err: ev.Err, Protocol: "tftp",
	})
	if err != nil {
		o.log.Warn("inventory: TFTP transfer not recorded", "file", ev.File, "err", err)
	}
}

// httpObserver adapts the inventory to httpboot.Observer.
type httpObserver struct {
	inv *inventory.Store
	log *slog.Logger
}

func (o *httpObserver) Transfer(ev httpboot.Event) {
	if o.inv == nil {
		return
	}
	err := o.inv.RecordTransfer(inventory.Transfer{
		Remote: ev.Remote.Addr(), File: ev.File, Bytes: ev.Bytes, Started: ev.Started,
		Duration: ev.Duration, Err: ev.Err, Protocol: "http",
	})
	if err != nil {
		o.log.Warn("inventory: HTTP transfer not recorded", "file", ev.File, "err", err)
	}
}

var (
	_ dhcp.Policy        = policy{}
	_ dhcp.LeaseObserver = policy{}
	_ tftp.Observer      = tftpObserver{}
	_ httpboot.Observer  = (*httpObserver)(nil)
)
