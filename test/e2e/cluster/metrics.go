package cluster

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Sample is one line of the Prometheus text format.
type Sample struct {
	Name   string
	Labels map[string]string
	Value  float64
}

// Metrics is a scrape: every sample, in order.
type Metrics []Sample

// ParseMetrics reads the Prometheus text exposition format (version
// 0.0.4): comments skipped, label values unescaped, timestamps ignored.
func ParseMetrics(r io.Reader) (Metrics, error) {
	var m Metrics
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		s, err := parseSample(line)
		if err != nil {
			return nil, fmt.Errorf("metrics line %d: %w", n, err)
		}
		m = append(m, s)
	}
	return m, sc.Err()
}

func parseSample(line string) (Sample, error) {
	s := Sample{Labels: map[string]string{}}
	i := strings.IndexAny(line, "{ ")
	if i <= 0 {
		return s, fmt.Errorf("no value in %q", line)
	}
	s.Name, line = line[:i], line[i:]
	if line[0] == '{' {
		line = line[1:]
		for {
			line = strings.TrimLeft(line, " ,")
			if line == "" {
				return s, fmt.Errorf("unterminated labels in sample %s", s.Name)
			}
			if line[0] == '}' {
				line = line[1:]
				break
			}
			eq := strings.IndexByte(line, '=')
			if eq <= 0 || len(line) < eq+2 || line[eq+1] != '"' {
				return s, fmt.Errorf("bad label in sample %s", s.Name)
			}
			name := strings.TrimSpace(line[:eq])
			line = line[eq+2:]
			var val strings.Builder
			closed := false
			for j := 0; j < len(line); j++ {
				c := line[j]
				if c == '\\' && j+1 < len(line) {
					j++
					switch line[j] {
					case 'n':
						val.WriteByte('\n')
					default:
						val.WriteByte(line[j])
					}
					continue
				}
				if c == '"' {
					line = line[j+1:]
					closed = true
					break
				}
				val.WriteByte(c)
			}
			if !closed {
				return s, fmt.Errorf("unterminated label value in sample %s", s.Name)
			}
			s.Labels[name] = val.String()
		}
	}
	fields := strings.Fields(line)
	if len(fields) == 0 {
		return s, fmt.Errorf("no value in sample %s", s.Name)
	}
	v, err := strconv.ParseFloat(fields[0], 64)
	if err != nil {
		return s, fmt.Errorf("sample %s: %w", s.Name, err)
	}
	s.Value = v
	return s, nil
}

// Sum adds the values of every sample named name whose labels include all
// of match, given as name, value pairs: Sum("x_total", "code", "OK").
func (m Metrics) Sum(name string, match ...string) float64 {
	var sum float64
outer:
	for _, s := range m {
		if s.Name != name {
			continue
		}
		for i := 0; i+1 < len(match); i += 2 {
			if s.Labels[match[i]] != match[i+1] {
				continue outer
			}
		}
		sum += s.Value
	}
	return sum
}

// The keywarden metrics the scenarios read.
const (
	MetricGRPCHandled     = "keywarden_grpc_server_handled_total"
	MetricKeystoreOpCount = "keywarden_keystore_operation_duration_seconds_count"
	MetricKEKCacheHits    = "keywarden_kek_cache_hits_total"
	MetricKEKCacheMisses  = "keywarden_kek_cache_misses_total"
)

// KMSCounts is a summary of one keywarden's metrics.
type KMSCounts struct {
	// DecryptOK and DecryptFailed count Decrypt RPCs by outcome.
	DecryptOK, DecryptFailed float64
	// EncryptOK counts successful Encrypt RPCs.
	EncryptOK float64
	// Unwraps and Wraps count keystore calls (any result).
	Unwraps, Wraps float64
	// CacheHits and CacheMisses count local KEK cache lookups.
	CacheHits, CacheMisses float64
}

// Counts summarises m.
func (m Metrics) Counts() KMSCounts {
	decryptAll := m.Sum(MetricGRPCHandled, "grpc_method", "Decrypt")
	c := KMSCounts{
		DecryptOK:   m.Sum(MetricGRPCHandled, "grpc_method", "Decrypt", "grpc_code", "OK"),
		EncryptOK:   m.Sum(MetricGRPCHandled, "grpc_method", "Encrypt", "grpc_code", "OK"),
		Unwraps:     m.Sum(MetricKeystoreOpCount, "op", "unwrap"),
		Wraps:       m.Sum(MetricKeystoreOpCount, "op", "wrap"),
		CacheHits:   m.Sum(MetricKEKCacheHits),
		CacheMisses: m.Sum(MetricKEKCacheMisses),
	}
	c.DecryptFailed = decryptAll - c.DecryptOK
	return c
}
