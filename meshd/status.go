package meshd

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Status is what `meshd status` shows: keyd's side (the follower) and the
// device's side (peers as WireGuard sees them).
type Status struct {
	Interface  string         `json:"interface"`
	PublicKey  string         `json:"public_key"`
	ListenPort int            `json:"listen_port"`
	PeerSet    FollowerStatus `json:"peer_set"`
	Peers      []PeerStatus   `json:"peers"`
}

// PeerStatus is one configured peer.
type PeerStatus struct {
	NodeID     string   `json:"node_id,omitempty"`
	PublicKey  string   `json:"public_key"`
	Endpoint   string   `json:"endpoint,omitempty"`
	AllowedIPs []string `json:"allowed_ips"`
	// LastHandshake is zero if there was none yet.
	LastHandshake time.Time `json:"last_handshake,omitzero"`
	RxBytes       int64     `json:"rx_bytes"`
	TxBytes       int64     `json:"tx_bytes"`
}

// nodeIDs maps the last applied set's keys to node IDs.
func (a *Applier) nodeIDs() map[wgtypes.Key]string {
	a.mu.Lock()
	defer a.mu.Unlock()
	m := make(map[wgtypes.Key]string, len(a.prev))
	for k, p := range a.prev {
		m[k] = p.NodeID
	}
	return m
}

// Monitor reads the device and the follower for status and metrics.
type Monitor struct {
	Applier  *Applier
	Follower *Follower
}

// Status reads the device now.
func (m *Monitor) Status() (*Status, error) {
	d, err := m.Applier.WG.Device(m.Applier.Interface)
	if err != nil {
		return nil, fmt.Errorf("wireguard device %s: %w", m.Applier.Interface, err)
	}
	ids := m.Applier.nodeIDs()
	s := &Status{Interface: d.Name, PublicKey: d.PublicKey.String(), ListenPort: d.ListenPort, Peers: []PeerStatus{}}
	if m.Follower != nil {
		s.PeerSet = m.Follower.Status()
	}
	for _, p := range d.Peers {
		ps := PeerStatus{NodeID: ids[p.PublicKey], PublicKey: p.PublicKey.String(), LastHandshake: p.LastHandshakeTime,
			RxBytes: p.ReceiveBytes, TxBytes: p.TransmitBytes, AllowedIPs: []string{}}
		if p.Endpoint != nil {
			ps.Endpoint = p.Endpoint.String()
		}
		for _, a := range p.AllowedIPs {
			ps.AllowedIPs = append(ps.AllowedIPs, a.String())
		}
		s.Peers = append(s.Peers, ps)
	}
	slices.SortFunc(s.Peers, func(a, b PeerStatus) int {
		if a.NodeID != b.NodeID {
			if a.NodeID < b.NodeID {
				return -1
			}
			return 1
		}
		if a.PublicKey < b.PublicKey {
			return -1
		}
		return 1
	})
	return s, nil
}

var (
	descPeers     = prometheus.NewDesc("meshd_peers", "Peers configured on the WireGuard interface.", nil, nil)
	descHandshake = prometheus.NewDesc("meshd_peer_handshake_age_seconds", "Seconds since the last handshake with a peer (absent: none yet).", []string{"node", "key"}, nil)
	descRx        = prometheus.NewDesc("meshd_peer_receive_bytes_total", "Bytes received from a peer.", []string{"node", "key"}, nil)
	descTx        = prometheus.NewDesc("meshd_peer_transmit_bytes_total", "Bytes sent to a peer.", []string{"node", "key"}, nil)
	descRevision  = prometheus.NewDesc("meshd_peer_set_revision", "Revision of the last applied peer set.", nil, nil)
	descStale     = prometheus.NewDesc("meshd_peer_set_stale", "1 while keyd has not answered for longer than the stale limit.", nil, nil)
	descFailures  = prometheus.NewDesc("meshd_keyd_failures", "Consecutive failed calls to keyd.", nil, nil)
	descUp        = prometheus.NewDesc("meshd_device_up", "1 if the WireGuard device could be read.", nil, nil)
)

// Describe implements prometheus.Collector.
func (m *Monitor) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPeers, descHandshake, descRx, descTx, descRevision, descStale, descFailures, descUp} {
		ch <- d
	}
}

// Collect implements prometheus.Collector; it reads the device at scrape
// time, so the numbers are WireGuard's own.
func (m *Monitor) Collect(ch chan<- prometheus.Metric) {
	if m.Follower != nil {
		fs := m.Follower.Status()
		stale := 0.0
		if fs.Stale {
			stale = 1
		}
		ch <- prometheus.MustNewConstMetric(descRevision, prometheus.GaugeValue, float64(fs.Revision))
		ch <- prometheus.MustNewConstMetric(descStale, prometheus.GaugeValue, stale)
		ch <- prometheus.MustNewConstMetric(descFailures, prometheus.GaugeValue, float64(fs.Failures))
	}
	s, err := m.Status()
	if err != nil {
		ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, 1)
	ch <- prometheus.MustNewConstMetric(descPeers, prometheus.GaugeValue, float64(len(s.Peers)))
	now := time.Now()
	for _, p := range s.Peers {
		if !p.LastHandshake.IsZero() {
			ch <- prometheus.MustNewConstMetric(descHandshake, prometheus.GaugeValue, now.Sub(p.LastHandshake).Seconds(), p.NodeID, p.PublicKey)
		}
		ch <- prometheus.MustNewConstMetric(descRx, prometheus.CounterValue, float64(p.RxBytes), p.NodeID, p.PublicKey)
		ch <- prometheus.MustNewConstMetric(descTx, prometheus.CounterValue, float64(p.TxBytes), p.NodeID, p.PublicKey)
	}
}

// Handler serves /metrics (Prometheus) and /status (JSON, for `meshd status`).
func (m *Monitor) Handler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(m)
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		s, err := m.Status()
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(s)
	})
	return mux
}

// WriteStatus prints s as `meshd status` shows it.
func WriteStatus(w io.Writer, s *Status, now time.Time) error {
	stale := "fresh"
	if s.PeerSet.Stale {
		stale = "STALE"
	}
	fmt.Fprintf(w, "interface %s  public key %s  port %d\n", s.Interface, s.PublicKey, s.ListenPort)
	fmt.Fprintf(w, "peer set revision %d (%d nodes), %s, last contact %s",
		s.PeerSet.Revision, s.PeerSet.Peers, stale, ago(s.PeerSet.LastContact, now))
	if s.PeerSet.LastError != "" {
		fmt.Fprintf(w, ", %d failures, last: %s", s.PeerSet.Failures, s.PeerSet.LastError)
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tKEY\tENDPOINT\tALLOWED IPS\tHANDSHAKE\tRX\tTX")
	for _, p := range s.Peers {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\n", p.NodeID, p.PublicKey, p.Endpoint,
			strings.Join(p.AllowedIPs, ","), ago(p.LastHandshake, now), p.RxBytes, p.TxBytes)
	}
	return tw.Flush()
}

func ago(t, now time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return now.Sub(t).Round(time.Second).String() + " ago"
}
