package inventory

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	bolt "go.etcd.io/bbolt"
)

// Errors the API maps to status codes.
var (
	ErrNotFound = errors.New("not found")
	ErrConflict = errors.New("conflict")
)

var (
	bMachines = []byte("machines")
	bEvents   = []byte("events")  // seq → Event
	bMEvents  = []byte("mevents") // mac|seq → nil: a machine's timeline
	bProfiles = []byte("profiles")
	bMeta     = []byte("meta")
)

// schemaVersion is stored in the meta bucket; Open refuses other versions
// rather than misread them.
const schemaVersion = "1"

// Options configure a Store. Zero values are sane defaults.
type Options struct {
	// Rules accept machines automatically when they are first seen (and on
	// every later request while still discovered).
	Rules []Rule
	// DiscoveryProfile is booted by machines not yet accepted; empty means
	// they get no boot answer at all.
	DiscoveryProfile string
	// DefaultProfile is booted by accepted machines without a profile.
	DefaultProfile string
	// BIOSFile is offered over TFTP to legacy BIOS clients (option 93 = 0),
	// which cannot boot a UKI; empty means no answer.
	BIOSFile string
	// HTTPBase is the URL prefix of images for UEFI HTTP boot, e.g.
	// "http://192.0.2.1:8080/images"; empty means HTTP clients get no answer.
	HTTPBase string
	// StatusURL ("http://HOST:PORT", the boot HTTP listener) is sent in
	// option 224 as "status=" with the other hints, so attestd can report
	// its progress (NodeStatus); empty: not sent.
	StatusURL string
	// MaxEventsPerMachine bounds each timeline (default 256); older events
	// are dropped so a machine stuck in a DHCP loop cannot fill the disk.
	MaxEventsPerMachine int
	// OfferTTL is how long an offered file is remembered to attribute a
	// transfer from an unknown address to a machine (default 10 min).
	OfferTTL time.Duration

	Now        func() time.Time
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// NoSync disables fsync; only for benchmarks that measure something else.
	NoSync bool
}

// Store is the inventory. Safe for concurrent use.
type Store struct {
	db   *bolt.DB
	opts Options
	log  *slog.Logger

	mu      sync.Mutex
	ipMAC   map[netip.Addr]string // learnt from leases: exact
	ipGuess map[netip.Addr]string // from earlier attributions: a guess
	offers  map[string][]offer    // base file name → machines it was offered to

	events *prometheus.CounterVec

	commits chan commit
	quit    chan struct{}
	stopped chan struct{}
	closing sync.Once
}

// commit is one write waiting for the group committer.
type commit struct {
	fn   func(*bolt.Tx) error
	done chan error
}

type offer struct {
	mac string
	at  time.Time
}

// Open opens (creating if needed) the inventory database at file.
func Open(file string, opts Options) (*Store, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.MaxEventsPerMachine <= 0 {
		opts.MaxEventsPerMachine = 256
	}
	if opts.OfferTTL <= 0 {
		opts.OfferTTL = 10 * time.Minute
	}
	if opts.StatusURL != "" {
		if err := checkStatusURL(opts.StatusURL); err != nil {
			return nil, fmt.Errorf("inventory: status URL: %w", err)
		}
	}
	for i := range opts.Rules {
		if err := opts.Rules[i].Validate(); err != nil {
			return nil, fmt.Errorf("inventory: rules[%d]: %w", i, err)
		}
	}
	db, err := bolt.Open(file, 0o600, &bolt.Options{Timeout: 2 * time.Second, NoSync: opts.NoSync})
	if err != nil {
		return nil, fmt.Errorf("inventory: open %s: %w", file, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bMachines, bEvents, bMEvents, bProfiles, bMeta} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bMeta)
		switch v := meta.Get([]byte("schema")); {
		case v == nil:
			return meta.Put([]byte("schema"), []byte(schemaVersion))
		case string(v) != schemaVersion:
			return fmt.Errorf("schema version %q, this build reads %q", v, schemaVersion)
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("inventory: init %s: %w", file, err)
	}
	s := &Store{
		db: db, opts: opts, log: opts.Logger,
		ipMAC:   map[netip.Addr]string{},
		ipGuess: map[netip.Addr]string{},
		offers:  map[string][]offer{},
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "provisioner_inventory_boot_events_total",
			Help: "Boot events recorded in the inventory, by kind.",
		}, []string{"kind"}),
	}
	s.commits = make(chan commit, 1024)
	s.quit = make(chan struct{})
	s.stopped = make(chan struct{})
	if opts.Registerer != nil {
		if err := opts.Registerer.Register(s.events); err != nil {
			db.Close()
			return nil, fmt.Errorf("inventory: register metrics: %w", err)
		}
		if err := opts.Registerer.Register(stateCollector{s}); err != nil {
			db.Close()
			return nil, fmt.Errorf("inventory: register metrics: %w", err)
		}
	}
	go s.committer()
	return s, nil
}

// Close stops the committer (after the writes already queued) and closes
// the database.
func (s *Store) Close() error {
	s.closing.Do(func() { close(s.quit) })
	<-s.stopped
	return s.db.Close()
}

var errClosed = errors.New("inventory closed")

// write runs fn in a read-write transaction shared with whatever other
// writes are queued at that moment: one fsync for all of them (group
// commit). Unlike bbolt's Batch it never waits for a timer, so a lone
// request is committed at once. fn may run twice (alone, if the shared
// transaction failed), so it must derive everything from tx.
func (s *Store) write(fn func(*bolt.Tx) error) error {
	c := commit{fn: fn, done: make(chan error, 1)}
	select {
	case s.commits <- c:
	case <-s.quit:
		return errClosed
	}
	return <-c.done
}

func (s *Store) committer() {
	defer close(s.stopped)
	const maxGroup = 512
	group := make([]commit, 0, maxGroup)
	for {
		group = group[:0]
		select {
		case c := <-s.commits:
			group = append(group, c)
		case <-s.quit:
			// Drain what was queued before Close.
			for {
				select {
				case c := <-s.commits:
					c.done <- s.db.Update(c.fn)
				default:
					return
				}
			}
		}
	fill:
		for len(group) < maxGroup {
			select {
			case c := <-s.commits:
				group = append(group, c)
			default:
				break fill
			}
		}
		err := s.db.Update(func(tx *bolt.Tx) error {
			for _, c := range group {
				if err := c.fn(tx); err != nil {
					return err
				}
			}
			return nil
		})
		if err == nil || len(group) == 1 {
			for _, c := range group {
				c.done <- err
			}
			continue
		}
		// One failed: rerun each alone so only it sees its error.
		for _, c := range group {
			c.done <- s.db.Update(c.fn)
		}
	}
}

// Request is what the DHCP server saw of a client (mirrors dhcp.Client).
type Request struct {
	MAC         net.HardwareAddr
	UUID        []byte
	Arch        uint16
	VendorClass string
	UserClass   string
	Relay       net.IP
	PXE         bool
	HTTPBoot    bool
	MessageType string
}

// Answer is the boot information to send; the zero value means none.
type Answer struct {
	TFTPFile string
	HTTPURL  string
	// Hints is the text of DHCP option 224 ("keyd=a,b cluster=c"), for an
	// accepted machine whose profile has keyd hints or a cluster. It is
	// computed for every request of the machine, network boot or not: the
	// OS's own DHCP client, after the UKI booted, is the one that asks.
	Hints string
}

// Boot records the request and decides the boot answer. Unaccepted machines
// get the discovery profile or nothing. The write is group-committed with
// concurrent requests and fsynced before Boot returns, so a
// machine that got an answer is on disk.
func (s *Store) Boot(ctx context.Context, req Request) (Answer, error) {
	if len(req.MAC) != 6 {
		return Answer{}, fmt.Errorf("inventory: MAC %x is not 6 bytes", []byte(req.MAC))
	}
	if err := ctx.Err(); err != nil {
		return Answer{}, err
	}
	mac := req.MAC.String()
	uuid := ""
	if len(req.UUID) > 0 {
		uuid = formatUUID(req.UUID)
	}
	now := s.opts.Now()
	var (
		ans   Answer
		m     Machine
		kinds []EventKind
	)
	err := s.write(func(tx *bolt.Tx) error {
		kinds = kinds[:0]
		ans = Answer{}
		var err error
		m, err = getMachine(tx, mac)
		switch {
		case errors.Is(err, ErrNotFound):
			m = Machine{MAC: mac, FirstSeen: now, State: Discovered, StateSince: now}
			if err := s.appendEvent(tx, Event{Time: now, MAC: mac, Kind: EventDiscover, State: Discovered}); err != nil {
				return err
			}
			kinds = append(kinds, EventDiscover)
		case err != nil:
			return err
		}
		if uuid != "" {
			m.UUID = uuid
		}
		m.Arch, m.ArchName = req.Arch, ArchName(req.Arch)
		m.VendorClass, m.UserClass = clip(req.VendorClass), clip(req.UserClass)
		m.Relay = ""
		if req.Relay != nil && !req.Relay.IsUnspecified() {
			m.Relay = req.Relay.String()
		}
		m.LastSeen = now
		if m.State == Discovered {
			for i := range s.opts.Rules {
				r := &s.opts.Rules[i]
				if r.Match(req.MAC, m.UUID) {
					m.State, m.StateSince, m.AcceptedBy = Accepted, now, "rule:"+r.Name
					if r.Profile != "" {
						m.Profile = r.Profile
					}
					if err := s.appendEvent(tx, Event{Time: now, MAC: mac, Kind: EventAccept, Detail: m.AcceptedBy, State: Accepted}); err != nil {
						return err
					}
					kinds = append(kinds, EventAccept)
					break
				}
			}
		}
		var why string
		ans, why = s.decide(tx, &m, req)
		ans.Hints = s.hints(tx, &m)
		m.LastBoot = ans.TFTPFile
		if ans.HTTPURL != "" {
			m.LastBoot = ans.HTTPURL
		}
		detail := fmt.Sprintf("%s %s", strings.ToUpper(clip(req.MessageType)), m.ArchName)
		file := ans.TFTPFile + ans.HTTPURL
		if file == "" {
			detail += ": no boot answer (" + why + ")"
		}
		if err := s.appendEvent(tx, Event{Time: now, MAC: mac, Kind: EventDHCP, Detail: detail, File: file, Remote: m.Relay}); err != nil {
			return err
		}
		kinds = append(kinds, EventDHCP)
		return putMachine(tx, &m)
	})
	if err != nil {
		return Answer{}, fmt.Errorf("inventory: record %s: %w", mac, err)
	}
	for _, k := range kinds {
		s.events.WithLabelValues(string(k)).Inc()
	}
	if f := bootFile(m.LastBoot); f != "" && m.State != Discovered {
		s.remember(f, mac, now)
	}
	return ans, nil
}

// hints is option 224's text for m: only for accepted machines (a
// discovered one has not been vouched for, so it is told nothing, not even
// under the discovery profile), from m's profile or the default profile.
func (s *Store) hints(tx *bolt.Tx, m *Machine) string {
	if m.State == Discovered {
		return ""
	}
	name := m.Profile
	if name == "" {
		name = s.opts.DefaultProfile
	}
	if name == "" {
		return ""
	}
	p, err := getProfile(tx, name)
	if err != nil {
		return "" // decide logs the missing profile when it matters
	}
	// A profile stored by an older build may not meet today's rules; a
	// text the init cannot parse would cost it every hint, so send none.
	if err := p.Validate(); err != nil {
		s.log.Warn("inventory: profile not valid, no hints sent", "mac", m.MAC, "profile", name, "err", err)
		return ""
	}
	text := p.HintText()
	if s.opts.StatusURL != "" {
		// The status hint comes last: were the option ever cut short, the
		// keyd hints, which the boot needs, are what survives.
		with := strings.TrimSpace(text + " status=" + s.opts.StatusURL)
		if len(with) <= MaxHintText {
			text = with
		}
	}
	return text
}

// decide picks the boot answer for m; why says why there is none.
func (s *Store) decide(tx *bolt.Tx, m *Machine, req Request) (Answer, string) {
	ipxe := strings.EqualFold(req.UserClass, "iPXE")
	if !req.PXE && !req.HTTPBoot && !ipxe {
		return Answer{}, "not a network-boot client"
	}
	name := m.Profile
	switch {
	case m.State == Discovered:
		name = s.opts.DiscoveryProfile
		if name == "" {
			return Answer{}, "not accepted"
		}
	case name == "":
		name = s.opts.DefaultProfile
		if name == "" {
			return Answer{}, "no profile assigned"
		}
	}
	p, err := getProfile(tx, name)
	if err != nil {
		s.log.Warn("inventory: machine's profile is missing", "mac", m.MAC, "profile", name)
		return Answer{}, "profile " + name + " missing"
	}
	var image string
	switch req.Arch {
	case ArchBIOS:
		if s.opts.BIOSFile == "" {
			return Answer{}, "BIOS clients cannot boot a UKI"
		}
		return Answer{TFTPFile: s.opts.BIOSFile}, ""
	case ArchX64UEFI, ArchX64UEFIAlt, ArchX64UEFIHTTP:
		image = p.Image
	case ArchARM64UEFI, ArchARM64UEFIHTT:
		image = p.ImageARM64
	}
	if image == "" {
		return Answer{}, "profile " + name + " has no image for " + ArchName(req.Arch)
	}
	http := req.HTTPBoot || req.Arch == ArchX64UEFIHTTP || req.Arch == ArchARM64UEFIHTT
	if http || (ipxe && s.opts.HTTPBase != "") {
		if s.opts.HTTPBase == "" {
			return Answer{}, "HTTP boot not configured"
		}
		return Answer{HTTPURL: strings.TrimSuffix(s.opts.HTTPBase, "/") + "/" + image}, ""
	}
	return Answer{TFTPFile: image}, ""
}

// bootFile is the base name of an offered file or URL.
func bootFile(s string) string {
	if s == "" {
		return ""
	}
	if i := strings.IndexAny(s, "?#"); i >= 0 {
		s = s[:i]
	}
	return path.Base(s)
}

func clip(s string) string {
	if len(s) > 255 {
		s = s[:255]
	}
	return strings.ToValidUTF8(s, "?")
}

func (s *Store) remember(file, mac string, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.offers[file]
	// Drop expired offers and an older offer to the same machine.
	keep := l[:0]
	for _, o := range l {
		if now.Sub(o.at) < s.opts.OfferTTL && o.mac != mac {
			keep = append(keep, o)
		}
	}
	if len(keep) >= 8192 {
		keep = keep[1:]
	}
	s.offers[file] = append(keep, offer{mac, now})
}

// LearnAddress tells the inventory that ip belongs to mac (from a lease), so
// transfers from ip are attributed exactly.
func (s *Store) LearnAddress(mac net.HardwareAddr, ip netip.Addr) {
	if len(mac) != 6 || !ip.IsValid() {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.ipMAC) > 1<<16 {
		clear(s.ipMAC)
	}
	s.ipMAC[ip.Unmap()] = mac.String()
}

// Transfer is a finished file transfer as a TFTP or HTTP server saw it.
type Transfer struct {
	Remote   netip.Addr
	File     string
	Bytes    int64
	Started  time.Time
	Duration time.Duration
	Err      error
	Protocol string // "tftp" or "http"
}

// attribute finds the machine behind a transfer: by an address learnt from
// a lease; else the machine this file was offered to longest ago (first
// come, first served) within OfferTTL; else the machine an earlier transfer
// from the same address was attributed to.
func (s *Store) attribute(t Transfer, now time.Time) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	remote := t.Remote.Unmap()
	if mac, ok := s.ipMAC[remote]; ok {
		return mac
	}
	f := bootFile(t.File)
	l := s.offers[f]
	for len(l) > 0 && now.Sub(l[0].at) >= s.opts.OfferTTL {
		l = l[1:]
	}
	if len(l) == 0 {
		delete(s.offers, f)
		return s.ipGuess[remote]
	}
	mac := l[0].mac
	s.offers[f] = l[1:]
	if remote.IsValid() {
		if len(s.ipGuess) > 1<<16 {
			clear(s.ipGuess)
		}
		s.ipGuess[remote] = mac
	}
	return mac
}

// RecordTransfer adds a transfer to the machine's timeline. A completed
// transfer of the machine's own image moves an accepted machine to booting.
func (s *Store) RecordTransfer(t Transfer) error {
	now := s.opts.Now()
	kind := EventTFTP
	if t.Protocol == "http" {
		kind = EventHTTP
	}
	ev := Event{Time: now, Kind: kind, File: clip(t.File), Bytes: t.Bytes, Took: t.Duration}
	if t.Remote.IsValid() {
		ev.Remote = t.Remote.Unmap().String()
	}
	if t.Err != nil {
		ev.Error = clip(t.Err.Error())
	}
	mac := s.attribute(t, now)
	ev.MAC = mac
	err := s.write(func(tx *bolt.Tx) error {
		e := ev
		if mac == "" {
			return s.appendEvent(tx, e)
		}
		m, err := getMachine(tx, mac)
		if errors.Is(err, ErrNotFound) {
			e.MAC = ""
			return s.appendEvent(tx, e)
		}
		if err != nil {
			return err
		}
		if e.Remote != "" {
			m.IP = e.Remote
		}
		if t.Err == nil && m.State != Discovered && bootFile(t.File) == bootFile(m.LastBoot) {
			if m.State != Booting {
				m.State, m.StateSince = Booting, now
			}
			e.State = Booting
		}
		if err := s.appendEvent(tx, e); err != nil {
			return err
		}
		return putMachine(tx, &m)
	})
	if err != nil {
		return fmt.Errorf("inventory: record transfer of %s: %w", t.File, err)
	}
	s.events.WithLabelValues(string(kind)).Inc()
	return nil
}

// Machines lists every machine, ordered by MAC.
func (s *Store) Machines() ([]Machine, error) {
	var out []Machine
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bMachines).ForEach(func(_, v []byte) error {
			var m Machine
			if err := json.Unmarshal(v, &m); err != nil {
				return err
			}
			out = append(out, m)
			return nil
		})
	})
	return out, err
}

// Machine returns one machine by MAC (any notation).
func (s *Store) Machine(mac string) (Machine, error) {
	n, err := NormalizeMAC(mac)
	if err != nil {
		return Machine{}, &FieldError{Field: "mac", Msg: err.Error()}
	}
	var m Machine
	err = s.db.View(func(tx *bolt.Tx) error {
		m, err = getMachine(tx, n)
		return err
	})
	return m, err
}

// Accept moves a machine to accepted, optionally assigning a profile. An
// unknown MAC is pre-registered as accepted, so an operator can accept a
// machine before it first asks. Accepting an accepted machine only updates
// its profile.
func (s *Store) Accept(mac, profile, by string) (Machine, error) {
	return s.modify(mac, true, func(tx *bolt.Tx, m *Machine, now time.Time) error {
		if profile != "" {
			if _, err := getProfile(tx, profile); err != nil {
				return &FieldError{Field: "profile", Msg: fmt.Sprintf("profile %q does not exist", profile)}
			}
			m.Profile = profile
		}
		if m.State == Discovered {
			m.State, m.StateSince, m.AcceptedBy = Accepted, now, by
		}
		return s.appendEvent(tx, Event{Time: now, MAC: m.MAC, Kind: EventAccept, Detail: by, State: m.State})
	})
}

// Assign sets a machine's profile; the state does not change.
func (s *Store) Assign(mac, profile string) (Machine, error) {
	return s.modify(mac, false, func(tx *bolt.Tx, m *Machine, now time.Time) error {
		if _, err := getProfile(tx, profile); err != nil {
			return &FieldError{Field: "profile", Msg: fmt.Sprintf("profile %q does not exist", profile)}
		}
		m.Profile = profile
		return s.appendEvent(tx, Event{Time: now, MAC: m.MAC, Kind: EventAssign, Detail: profile})
	})
}

// Report records a state reported by the cluster (attested, joined, failed).
// It is informational; only accepted machines can be reported on.
func (s *Store) Report(mac string, state State, detail string) (Machine, error) {
	if !slices.Contains(ReportableStates, state) {
		return Machine{}, &FieldError{Field: "state", Msg: fmt.Sprintf("%q is not one of attested, joined, failed", state)}
	}
	return s.modify(mac, false, func(tx *bolt.Tx, m *Machine, now time.Time) error {
		if m.State == Discovered {
			return fmt.Errorf("%w: machine %s is not accepted", ErrConflict, m.MAC)
		}
		m.State, m.StateSince = state, now
		return s.appendEvent(tx, Event{Time: now, MAC: m.MAC, Kind: EventState, Detail: clip(detail), State: state})
	})
}

func (s *Store) modify(mac string, create bool, f func(*bolt.Tx, *Machine, time.Time) error) (Machine, error) {
	n, err := NormalizeMAC(mac)
	if err != nil {
		return Machine{}, &FieldError{Field: "mac", Msg: err.Error()}
	}
	now := s.opts.Now()
	var m Machine
	err = s.db.Update(func(tx *bolt.Tx) error {
		m, err = getMachine(tx, n)
		if errors.Is(err, ErrNotFound) && create {
			m = Machine{MAC: n, FirstSeen: now, LastSeen: now, State: Discovered, StateSince: now}
		} else if err != nil {
			return err
		}
		if err := f(tx, &m, now); err != nil {
			return err
		}
		return putMachine(tx, &m)
	})
	return m, err
}

// Forget removes a machine and its timeline. If it asks again it is
// discovered anew.
func (s *Store) Forget(mac string) error {
	n, err := NormalizeMAC(mac)
	if err != nil {
		return &FieldError{Field: "mac", Msg: err.Error()}
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		if tx.Bucket(bMachines).Get([]byte(n)) == nil {
			return fmt.Errorf("machine %s: %w", n, ErrNotFound)
		}
		if err := tx.Bucket(bMachines).Delete([]byte(n)); err != nil {
			return err
		}
		me, ev := tx.Bucket(bMEvents), tx.Bucket(bEvents)
		c := me.Cursor()
		prefix := []byte(n + "|")
		for k, _ := c.Seek(prefix); k != nil && strings.HasPrefix(string(k), string(prefix)); k, _ = c.Seek(prefix) {
			if err := ev.Delete(k[len(prefix):]); err != nil {
				return err
			}
			if err := me.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	s.mu.Lock()
	for _, ips := range []map[netip.Addr]string{s.ipMAC, s.ipGuess} {
		for ip, m := range ips {
			if m == n {
				delete(ips, ip)
			}
		}
	}
	s.mu.Unlock()
	return nil
}

// Timeline returns a machine's events, oldest first.
func (s *Store) Timeline(mac string) ([]Event, error) {
	n, err := NormalizeMAC(mac)
	if err != nil {
		return nil, &FieldError{Field: "mac", Msg: err.Error()}
	}
	var out []Event
	err = s.db.View(func(tx *bolt.Tx) error {
		if tx.Bucket(bMachines).Get([]byte(n)) == nil {
			return fmt.Errorf("machine %s: %w", n, ErrNotFound)
		}
		ev := tx.Bucket(bEvents)
		c := tx.Bucket(bMEvents).Cursor()
		prefix := []byte(n + "|")
		for k, _ := c.Seek(prefix); k != nil && strings.HasPrefix(string(k), string(prefix)); k, _ = c.Next() {
			var e Event
			if err := json.Unmarshal(ev.Get(k[len(prefix):]), &e); err != nil {
				return fmt.Errorf("event %x: %w", k[len(prefix):], err)
			}
			out = append(out, e)
		}
		return nil
	})
	return out, err
}

// Events returns up to limit events with a sequence number above after,
// oldest first, across all machines (including unattributed transfers).
func (s *Store) Events(after uint64, limit int) ([]Event, error) {
	if limit <= 0 || limit > 10000 {
		limit = 10000
	}
	var out []Event
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bEvents).Cursor()
		for k, v := c.Seek(seqKey(after + 1)); k != nil && len(out) < limit; k, v = c.Next() {
			var e Event
			if err := json.Unmarshal(v, &e); err != nil {
				return fmt.Errorf("event %x: %w", k, err)
			}
			out = append(out, e)
		}
		return nil
	})
	return out, err
}

// Profiles lists profiles by name.
func (s *Store) Profiles() ([]Profile, error) {
	var out []Profile
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bProfiles).ForEach(func(_, v []byte) error {
			var p Profile
			if err := json.Unmarshal(v, &p); err != nil {
				return err
			}
			out = append(out, p)
			return nil
		})
	})
	return out, err
}

// Profile returns one profile.
func (s *Store) Profile(name string) (Profile, error) {
	var p Profile
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		p, err = getProfile(tx, name)
		return err
	})
	return p, err
}

// PutProfile creates or replaces a profile.
func (s *Store) PutProfile(p Profile) error {
	if err := p.Validate(); err != nil {
		return err
	}
	v, err := json.Marshal(p)
	if err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bProfiles).Put([]byte(p.Name), v) })
}

// DeleteProfile removes a profile no machine uses.
func (s *Store) DeleteProfile(name string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		if tx.Bucket(bProfiles).Get([]byte(name)) == nil {
			return fmt.Errorf("profile %q: %w", name, ErrNotFound)
		}
		var users []string
		err := tx.Bucket(bMachines).ForEach(func(k, v []byte) error {
			var m Machine
			if err := json.Unmarshal(v, &m); err != nil {
				return err
			}
			if m.Profile == name {
				users = append(users, m.MAC)
			}
			return nil
		})
		if err != nil {
			return err
		}
		if len(users) > 0 {
			if len(users) > 5 {
				users = append(users[:5], "…")
			}
			return fmt.Errorf("%w: profile %q is assigned to %s", ErrConflict, name, strings.Join(users, ", "))
		}
		return tx.Bucket(bProfiles).Delete([]byte(name))
	})
}

func getMachine(tx *bolt.Tx, mac string) (Machine, error) {
	v := tx.Bucket(bMachines).Get([]byte(mac))
	if v == nil {
		return Machine{}, fmt.Errorf("machine %s: %w", mac, ErrNotFound)
	}
	var m Machine
	if err := json.Unmarshal(v, &m); err != nil {
		return Machine{}, fmt.Errorf("machine %s: %w", mac, err)
	}
	return m, nil
}

func putMachine(tx *bolt.Tx, m *Machine) error {
	v, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return tx.Bucket(bMachines).Put([]byte(m.MAC), v)
}

func getProfile(tx *bolt.Tx, name string) (Profile, error) {
	v := tx.Bucket(bProfiles).Get([]byte(name))
	if v == nil {
		return Profile{}, fmt.Errorf("profile %q: %w", name, ErrNotFound)
	}
	var p Profile
	if err := json.Unmarshal(v, &p); err != nil {
		return Profile{}, fmt.Errorf("profile %q: %w", name, err)
	}
	return p, nil
}

func seqKey(n uint64) []byte { return binary.BigEndian.AppendUint64(nil, n) }

// appendEvent stores e with the next sequence number and indexes it under its
// machine, dropping the machine's oldest events beyond the cap.
func (s *Store) appendEvent(tx *bolt.Tx, e Event) error {
	ev := tx.Bucket(bEvents)
	seq, err := ev.NextSequence()
	if err != nil {
		return err
	}
	e.Seq = seq
	v, err := json.Marshal(e)
	if err != nil {
		return err
	}
	if err := ev.Put(seqKey(seq), v); err != nil {
		return err
	}
	// Unattributed events (transfers nobody was offered, junk requests) are
	// indexed under "~", which no MAC can spell, so they are capped too.
	owner, limit := e.MAC, s.opts.MaxEventsPerMachine
	if owner == "" {
		owner, limit = "~", 4*s.opts.MaxEventsPerMachine
	}
	me := tx.Bucket(bMEvents)
	prefix := []byte(owner + "|")
	if err := me.Put(append(slices.Clip(prefix), seqKey(seq)...), nil); err != nil {
		return err
	}
	var keys [][]byte
	c := me.Cursor()
	for k, _ := c.Seek(prefix); k != nil && strings.HasPrefix(string(k), string(prefix)); k, _ = c.Next() {
		keys = append(keys, slices.Clone(k))
	}
	for _, k := range keys[:max(0, len(keys)-limit)] {
		if err := ev.Delete(k[len(prefix):]); err != nil {
			return err
		}
		if err := me.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// stateCollector exports the number of machines in each state at scrape
// time, read from the database so it is never out of step with it.
type stateCollector struct{ s *Store }

var machinesDesc = prometheus.NewDesc("provisioner_inventory_machines", "Machines in the inventory, by state.", []string{"state"}, nil)

func (c stateCollector) Describe(ch chan<- *prometheus.Desc) { ch <- machinesDesc }

func (c stateCollector) Collect(ch chan<- prometheus.Metric) {
	counts := map[State]int{}
	_ = c.s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bMachines).ForEach(func(_, v []byte) error {
			var m struct{ State State }
			if json.Unmarshal(v, &m) == nil {
				counts[m.State]++
			}
			return nil
		})
	})
	for _, st := range States {
		ch <- prometheus.MustNewConstMetric(machinesDesc, prometheus.GaugeValue, float64(counts[st]), string(st))
	}
}
