package tftp

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// Observer receives one Event per finished request (served, refused or
// failed). It is defined here, by its consumer; the inventory implements it.
// Transfer is called from the transfer's goroutine and must not block long.
type Observer interface {
	Transfer(ev Event)
}

// Event describes one finished TFTP request.
type Event struct {
	Remote   netip.AddrPort
	File     string
	Bytes    int64 // file bytes the client acknowledged
	Started  time.Time
	Duration time.Duration
	Err      error  // nil when the whole file was acknowledged
	Protocol string // always "tftp"
}

// Server is a read-only TFTP server. Create it with New, run it with Serve.
type Server struct {
	cfg  Config
	log  *slog.Logger
	obs  Observer
	m    *metrics
	root *os.Root
	conn *net.UDPConn
	// cm4/cm6 read the destination address of each request when the server
	// listens on an unspecified address; nil when Listen names one address.
	cm4     *ipv4.PacketConn
	cm6     *ipv6.PacketConn
	localIP netip.Addr

	// Now is the clock; tests may replace it before Serve.
	Now func() time.Time

	mu     sync.Mutex
	perIP  map[netip.Addr]int
	active map[netip.AddrPort]bool
	total  int
	wg     sync.WaitGroup
}

// New validates cfg, opens the root and binds the request socket. log may
// be nil (no logs), obs may be nil (no events), reg may be nil (metrics are
// kept but not registered).
func New(cfg Config, log *slog.Logger, obs Observer, reg prometheus.Registerer) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("tftp: register metrics: %w", err)
	}
	root, err := os.OpenRoot(cfg.Root)
	if err != nil {
		return nil, fmt.Errorf("tftp.root: %w", err)
	}
	laddr, err := net.ResolveUDPAddr("udp", cfg.Listen)
	if err != nil {
		root.Close()
		return nil, fmt.Errorf("tftp.listen: %w", err)
	}
	conn, err := net.ListenUDP("udp", laddr)
	if err != nil {
		root.Close()
		return nil, fmt.Errorf("tftp.listen: %w", err)
	}
	s := &Server{
		cfg: cfg, log: log, obs: obs, m: m, root: root, conn: conn,
		Now:    time.Now,
		perIP:  map[netip.Addr]int{},
		active: map[netip.AddrPort]bool{},
	}
	setBuffers(conn, cfg.SocketBuffer)
	local := conn.LocalAddr().(*net.UDPAddr).AddrPort().Addr()
	if local.IsUnspecified() {
		if local.Is4() {
			s.cm4 = ipv4.NewPacketConn(conn)
			err = s.cm4.SetControlMessage(ipv4.FlagDst, true)
		} else {
			s.cm6 = ipv6.NewPacketConn(conn)
			err = s.cm6.SetControlMessage(ipv6.FlagDst, true)
		}
		if err != nil {
			conn.Close()
			root.Close()
			return nil, fmt.Errorf("tftp.listen: cannot learn request destinations on %s: %w", cfg.Listen, err)
		}
	} else {
		s.localIP = local
	}
	return s, nil
}

// Addr is the bound request address.
func (s *Server) Addr() netip.AddrPort { return s.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

// Serve answers requests until ctx is done, then closes the socket, ends
// running transfers and returns nil. It returns an error only if reading the
// request socket fails for another reason.
func (s *Server) Serve(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { s.conn.Close() })
	defer stop()
	defer s.root.Close()
	defer s.wg.Wait()
	buf := make([]byte, 65536)
	for {
		n, remote, local, err := s.read(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			cancel()
			return fmt.Errorf("tftp: read request: %w", err)
		}
		s.handle(ctx, buf[:n], remote, local)
	}
}

func (s *Server) read(buf []byte) (int, netip.AddrPort, netip.Addr, error) {
	switch {
	case s.cm4 != nil:
		n, cm, src, err := s.cm4.ReadFrom(buf)
		if err != nil {
			return 0, netip.AddrPort{}, netip.Addr{}, err
		}
		var local netip.Addr
		if cm != nil {
			local, _ = netip.AddrFromSlice(cm.Dst)
		}
		return n, src.(*net.UDPAddr).AddrPort(), local.Unmap(), nil
	case s.cm6 != nil:
		n, cm, src, err := s.cm6.ReadFrom(buf)
		if err != nil {
			return 0, netip.AddrPort{}, netip.Addr{}, err
		}
		var local netip.Addr
		if cm != nil {
			local, _ = netip.AddrFromSlice(cm.Dst)
		}
		return n, src.(*net.UDPAddr).AddrPort(), local.Unmap(), nil
	default:
		n, src, err := s.conn.ReadFromUDPAddrPort(buf)
		return n, src, s.localIP, err
	}
}

// handle answers one packet on the request socket. It never blocks on the
// file system or a client: transfers run on their own goroutine and socket.
func (s *Server) handle(ctx context.Context, b []byte, remote netip.AddrPort, local netip.Addr) {
	remote = netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port())
	if remote.Port() == 0 {
		s.m.bad.WithLabelValues("request").Inc()
		return
	}
	req, err := parseRequest(b)
	if err != nil {
		s.m.bad.WithLabelValues("request").Inc()
		s.log.Debug("tftp: bad request packet", "remote", remote, "len", len(b), "err", err)
		// Answer only what claims to be a request or is unknown: replying to
		// stray DATA/ACK/ERROR/OACK could start an error ping-pong between
		// two servers (RFC 1350 §7: errors are never acknowledged).
		if len(b) < 2 {
			return
		}
		switch binary.BigEndian.Uint16(b) {
		case opDATA, opACK, opERROR, opOACK:
			return
		}
		s.sendError(s.conn, remote, errIllegalOp, "malformed request")
		return
	}
	started := s.Now()
	ev := Event{Remote: remote, File: req.file, Started: started, Protocol: "tftp"}
	refuse := func(result string, code uint16, msg string, err error) {
		s.log.Info("tftp: request refused", "remote", remote, "file", req.file, "result", result, "err", err)
		s.m.transfers.WithLabelValues(result).Inc()
		s.sendError(s.conn, remote, code, msg)
		ev.Err = err
		ev.Duration = s.Now().Sub(started)
		s.notify(ev)
	}
	if req.op == opWRQ {
		refuse(resultRefused, errAccess, "read-only server", fmt.Errorf("write request for %q refused: read-only server", req.file))
		return
	}
	name, err := cleanName(req.file)
	if err != nil {
		refuse(resultRefused, errAccess, "access violation", err)
		return
	}
	if req.mode == "mail" {
		refuse(resultRefused, errIllegalOp, "mail mode not supported", fmt.Errorf("file %q: mail mode not supported", req.file))
		return
	}
	switch s.acquire(remote) {
	case acquireDuplicate:
		// The client retransmitted its request before our first answer
		// arrived; the running transfer answers it.
		s.log.Debug("tftp: duplicate request ignored", "remote", remote, "file", req.file)
		return
	case acquireLimited:
		refuse(resultLimited, errNotDefined, "too many transfers, retry later", fmt.Errorf("file %q: concurrent transfer limit reached", req.file))
		return
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		// The slot is free before anyone hears the transfer finished, so
		// observers and metrics agree.
		ev := s.serveFile(ctx, req, name, remote, local, ev)
		s.release(remote)
		s.notify(ev)
	}()
}

type acquireResult int

const (
	acquireOK acquireResult = iota
	acquireDuplicate
	acquireLimited
)

func (s *Server) acquire(remote netip.AddrPort) acquireResult {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.active[remote] {
		return acquireDuplicate
	}
	if s.total >= s.cfg.MaxTransfers || s.perIP[remote.Addr()] >= s.cfg.MaxPerClient {
		return acquireLimited
	}
	s.active[remote] = true
	s.perIP[remote.Addr()]++
	s.total++
	s.m.active.Inc()
	return acquireOK
}

func (s *Server) release(remote netip.AddrPort) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.active, remote)
	if s.perIP[remote.Addr()]--; s.perIP[remote.Addr()] <= 0 {
		delete(s.perIP, remote.Addr())
	}
	s.total--
	s.m.active.Dec()
}

func (s *Server) notify(ev Event) {
	if s.obs != nil {
		s.obs.Transfer(ev)
	}
}

func (s *Server) sendError(c *net.UDPConn, to netip.AddrPort, code uint16, msg string) {
	pkt := appendError(make([]byte, 0, 64), code, msg)
	var err error
	if to.IsValid() {
		_, err = c.WriteToUDPAddrPort(pkt, to)
	} else {
		_, err = c.Write(pkt)
	}
	if err != nil {
		s.log.Debug("tftp: send error packet", "remote", to, "err", err)
	}
}

// serveFile runs one read transfer on a new socket (the server's TID,
// RFC 1350 §4) connected to the client's TID, so the kernel drops packets
// from any other source.
// It returns the finished transfer's event; the caller releases the slot
// and notifies the observer.
func (s *Server) serveFile(ctx context.Context, req request, name string, remote netip.AddrPort, local netip.Addr, ev Event) Event {
	finish := func(result string, n int64, err error) {
		s.m.transfers.WithLabelValues(result).Inc()
		ev.Bytes = n
		ev.Err = err
		ev.Duration = s.Now().Sub(ev.Started)
		if err != nil {
			s.log.Info("tftp: transfer failed", "remote", remote, "file", req.file, "result", result, "bytes", n, "err", err)
		} else {
			s.log.Debug("tftp: transfer done", "remote", remote, "file", req.file, "bytes", n, "duration", ev.Duration)
		}
	}
	var laddr *net.UDPAddr
	if local.IsValid() {
		laddr = net.UDPAddrFromAddrPort(netip.AddrPortFrom(local, 0))
	}
	conn, err := net.DialUDP("udp", laddr, net.UDPAddrFromAddrPort(remote))
	if err != nil {
		finish(resultError, 0, fmt.Errorf("open transfer socket: %w", err))
		return ev
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	setBuffers(conn, s.cfg.SocketBuffer)

	f, err := s.root.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			s.sendError(conn, netip.AddrPort{}, errNotFound, "file not found")
			finish(resultNotFound, 0, fmt.Errorf("file %q: %w", req.file, err))
			return ev
		}
		s.sendError(conn, netip.AddrPort{}, errAccess, "access violation")
		finish(resultRefused, 0, fmt.Errorf("file %q: %w", req.file, err))
		return ev
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		s.sendError(conn, netip.AddrPort{}, errAccess, "not a regular file")
		finish(resultRefused, 0, fmt.Errorf("file %q: not a regular file", req.file))
		return ev
	}
	neg := negotiate(req, limits{maxBlock: s.cfg.MaxBlockSize, maxWindow: s.cfg.MaxWindowSize})
	if neg.tsize {
		neg.oack = append(neg.oack, option{"tsize", fmt.Sprint(fi.Size())})
	}
	timeout := time.Duration(s.cfg.Timeout)
	if neg.timeout > 0 {
		timeout = time.Duration(neg.timeout) * time.Second
	}
	t := newSender(conn, f, req.mode == "netascii", neg, timeout, s.cfg.Retries, s.m, s.log)
	n, err := t.run()
	switch {
	case err == nil:
		finish(resultOK, n, nil)
	case errors.Is(err, errClientAbort):
		finish(resultAborted, n, err)
	case errors.Is(err, errTimeout):
		s.sendError(conn, netip.AddrPort{}, errNotDefined, "timeout")
		finish(resultTimeout, n, err)
	default:
		if ctx.Err() == nil {
			s.sendError(conn, netip.AddrPort{}, errNotDefined, "server error")
		}
		finish(resultError, n, err)
	}
	return ev
}

// cleanName checks a requested file name and returns it as a path relative
// to the root. os.Root then refuses symlinks that leave the root.
func cleanName(name string) (string, error) {
	switch {
	case name == "":
		return "", errors.New("empty file name")
	case strings.ContainsRune(name, 0):
		return "", fmt.Errorf("file %q: NUL byte in name", name)
	case strings.ContainsRune(name, '\\'):
		return "", fmt.Errorf("file %q: backslash in name", name)
	case strings.HasPrefix(name, "/"):
		return "", fmt.Errorf("file %q: absolute path", name)
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f {
			return "", fmt.Errorf("file %q: control character in name", name)
		}
	}
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return "", fmt.Errorf("file %q: \"..\" in path", name)
		}
	}
	return name, nil
}

// setBuffers raises a socket's buffers so a whole window of large blocks
// (and, on the client side, of replies) is not dropped by the kernel. As
// root it forces past net.core.[rw]mem_max; otherwise the kernel caps it.
func setBuffers(c *net.UDPConn, size int) {
	rc, err := c.SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) {
		if syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUFFORCE, size) != nil {
			syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF, size)
		}
		if syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUFFORCE, size) != nil {
			syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, size)
		}
	})
}
