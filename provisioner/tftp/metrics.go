package tftp

import "github.com/prometheus/client_golang/prometheus"

// Transfer results, the values of the "result" label.
const (
	resultOK       = "ok"
	resultRefused  = "refused"   // write request, path escape, not a regular file
	resultNotFound = "not_found" // no such file
	resultLimited  = "limited"   // per-client or global cap reached
	resultAborted  = "aborted"   // the client sent an ERROR
	resultTimeout  = "timeout"   // retries exhausted
	resultError    = "error"     // local I/O or socket failure
)

type metrics struct {
	bytes      prometheus.Counter
	transfers  *prometheus.CounterVec
	active     prometheus.Gauge
	bad        *prometheus.CounterVec
	retransmit prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		bytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "provisioner_tftp_bytes_total", Help: "File bytes acknowledged by TFTP clients.",
		}),
		transfers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "provisioner_tftp_transfers_total", Help: "Finished TFTP requests by result.",
		}, []string{"result"}),
		active: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "provisioner_tftp_active_transfers", Help: "TFTP transfers in progress.",
		}),
		bad: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "provisioner_tftp_bad_packets_total", Help: "Malformed or unexpected TFTP packets by where they arrived.",
		}, []string{"where"}),
		retransmit: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "provisioner_tftp_retransmits_total", Help: "Windows resent after a timeout.",
		}),
	}
	for _, r := range []string{resultOK, resultRefused, resultNotFound, resultLimited, resultAborted, resultTimeout, resultError} {
		m.transfers.WithLabelValues(r)
	}
	m.bad.WithLabelValues("request")
	m.bad.WithLabelValues("transfer")
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.bytes, m.transfers, m.active, m.bad, m.retransmit} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
