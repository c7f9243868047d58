package dhcp

import (
	"strings"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/prometheus/client_golang/prometheus"
)

// Packet results, the "result" label of provisioner_dhcp_packets_total.
const (
	resultAnswered = "answered" // a reply was sent (OFFER, ACK)
	resultNAK      = "nak"      // a DHCPNAK was sent
	resultDone     = "done"     // handled, no reply by design (RELEASE, DECLINE)
	resultIgnored  = "ignored"  // not for us (other server chosen, non-PXE client in proxy mode, unaccepted)
	resultDropped  = "dropped"  // could not be served (no subnet, pool exhausted, commit failed)
	resultBad      = "bad"      // malformed input; reason in provisioner_dhcp_bad_packets_total
)

// Reasons for provisioner_dhcp_bad_packets_total.
const (
	badTruncated   = "truncated"
	badOversized   = "oversized"
	badMalformed   = "malformed"
	badOptionFlood = "option_flood"
	badWrongOp     = "wrong_op"
	badHWAddr      = "bad_hwaddr"
	badNoType      = "no_message_type"
	badUnknownType = "unknown_message_type"
	badUnexpected  = "unexpected_message_type"
)

type metrics struct {
	packets *prometheus.CounterVec
	// hot caches the packets counters of the five served message types,
	// so the packet path does no label hashing.
	hot          map[hotKey]prometheus.Counter
	bad          *prometheus.CounterVec
	batchSize    prometheus.Histogram
	commitTime   prometheus.Histogram
	commitErrors prometheus.Counter
	// hints counts option OptionHints by outcome: sent, or too_large for
	// the client's maximum message size.
	hints *prometheus.CounterVec
}

type hotKey struct {
	typ    dhcpv4.MessageType
	result string
}

var allResults = []string{resultAnswered, resultNAK, resultDone, resultIgnored, resultDropped}

func newMetrics() *metrics {
	m := &metrics{
		packets: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "provisioner_dhcp_packets_total",
			Help: "DHCP requests received, by message type and result.",
		}, []string{"type", "result"}),
		bad: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "provisioner_dhcp_bad_packets_total",
			Help: "DHCP packets dropped as malformed, by reason.",
		}, []string{"reason"}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "provisioner_dhcp_commit_batch_size",
			Help:    "Lease writes per bbolt transaction (group commit).",
			Buckets: prometheus.ExponentialBuckets(1, 2, 12),
		}),
		commitTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "provisioner_dhcp_commit_seconds",
			Help:    "Time to commit and fsync one batch of lease writes.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
		commitErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "provisioner_dhcp_commit_errors_total",
			Help: "Lease batches whose commit failed (their ACKs were not sent).",
		}),
		hints: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "provisioner_dhcp_hints_total",
			Help: "Replies to clients that asked for option 224 (keyd hints), by outcome: sent, too_large.",
		}, []string{"result"}),
	}
	m.hot = map[hotKey]prometheus.Counter{}
	for _, t := range []dhcpv4.MessageType{dhcpv4.MessageTypeDiscover, dhcpv4.MessageTypeRequest,
		dhcpv4.MessageTypeDecline, dhcpv4.MessageTypeRelease, dhcpv4.MessageTypeInform} {
		for _, r := range allResults {
			m.hot[hotKey{t, r}] = m.packets.WithLabelValues(strings.ToLower(t.String()), r)
		}
	}
	return m
}

// packet counts one request of type t with result.
func (m *metrics) packet(t dhcpv4.MessageType, result string) {
	if c, ok := m.hot[hotKey{t, result}]; ok {
		c.Inc()
		return
	}
	m.packets.WithLabelValues(strings.ToLower(t.String()), result).Inc()
}

// register adds the collectors to reg (nil: none).
func (m *metrics) register(reg prometheus.Registerer, inUse func() float64) error {
	if reg == nil {
		return nil
	}
	cs := []prometheus.Collector{m.packets, m.bad, m.batchSize, m.commitTime, m.commitErrors, m.hints}
	if inUse != nil {
		cs = append(cs, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "provisioner_dhcp_leases_in_use",
			Help: "Bound, unexpired leases.",
		}, inUse))
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

func (m *metrics) observeCommit(n int, d time.Duration, err error) {
	m.batchSize.Observe(float64(n))
	m.commitTime.Observe(d.Seconds())
	if err != nil {
		m.commitErrors.Inc()
	}
}
