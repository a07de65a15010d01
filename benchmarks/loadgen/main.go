// Command loadgen is the PlaceOrder benchmark's open-loop load generator
// (benchmarks/bench_place_order.py --generator go): it sends pre-serialized
// unary gRPC requests at a fixed arrival rate and records each one's latency
// from its intended send time. The Python script builds the requests (so the
// protobuf contract lives in one place), runs this program, and reads back the
// replies; this program never parses a message.
//
// It exists because the Python generator (grpc.aio) takes a tenth of the
// 2-core machine at 500 calls/s and is itself late by milliseconds at the
// p99: both land on the latency it measures. Built with Debian's golang-go and
// golang-google-grpc-dev, no network access: see docs/benchmarks/README.md.
//
// Input (file given by -in): repeated records of
//
//	uint32 len, authorization header value; uint32 len, request bytes
//
// Output (file given by -out), one record per request in request order:
//
//	uint32 gRPC status code, int64 send lag ns, int64 latency ns,
//	int64 completion time (Unix ns), uint32 len, reply bytes (empty on error)
//
// All integers little-endian. On stderr one line: the window in seconds.
package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// raw passes the bytes through: the requests are serialized already, the
// replies are parsed by the caller.
type raw struct{}

func (raw) Name() string { return "proto" }

func (raw) Marshal(v interface{}) ([]byte, error) { return *(v.(*[]byte)), nil }

func (raw) Unmarshal(data []byte, v interface{}) error {
	p := v.(*[]byte)
	*p = append((*p)[:0], data...)
	return nil
}

type request struct {
	auth string
	body []byte
}

type result struct {
	code    uint32
	lag     int64
	latency int64
	done    int64
	reply   []byte
}

func readRequests(path string) ([]request, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r := bufio.NewReader(f)
	var out []request
	next := func() ([]byte, error) {
		var n uint32
		if err := binary.Read(r, binary.LittleEndian, &n); err != nil {
			return nil, err
		}
		b := make([]byte, n)
		_, err := io.ReadFull(r, b)
		return b, err
	}
	for {
		auth, err := next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		body, err := next()
		if err != nil {
			return nil, fmt.Errorf("truncated input: %w", err)
		}
		out = append(out, request{string(auth), body})
	}
}

func writeResults(path string, results []result) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	for _, res := range results {
		for _, v := range []interface{}{res.code, res.lag, res.latency, res.done, uint32(len(res.reply))} {
			if err := binary.Write(w, binary.LittleEndian, v); err != nil {
				return err
			}
		}
		if _, err := w.Write(res.reply); err != nil {
			return err
		}
	}
	if err := w.Flush(); err != nil {
		return err
	}
	return f.Close()
}

func main() {
	target := flag.String("target", "", "Envoy's address, host:port")
	method := flag.String("method", "/stockmesh.order.v1.OrderService/PlaceOrder", "full method name")
	rate := flag.Float64("rate", 100, "requests a second, at fixed intervals")
	conns := flag.Int("conns", 6, "TCP connections (one gRPC client connection each), used in turn")
	timeout := flag.Duration("timeout", 10*time.Second, "deadline of each call")
	in := flag.String("in", "", "requests file")
	out := flag.String("out", "", "results file")
	flag.Parse()
	if *target == "" || *in == "" || *out == "" || *rate <= 0 || *conns < 1 {
		fmt.Fprintln(os.Stderr, "loadgen: -target, -in, -out, a positive -rate and -conns are required")
		os.Exit(2)
	}
	reqs, err := readRequests(*in)
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen: reading requests:", err)
		os.Exit(1)
	}
	clients := make([]*grpc.ClientConn, *conns)
	for i := range clients {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		clients[i], err = grpc.DialContext(ctx, *target, grpc.WithInsecure(), grpc.WithBlock())
		cancel()
		if err != nil {
			fmt.Fprintln(os.Stderr, "loadgen: connecting:", err)
			os.Exit(1)
		}
		defer clients[i].Close()
	}
	results := make([]result, len(reqs))
	codec := grpc.ForceCodec(raw{})
	var wg sync.WaitGroup
	interval := float64(time.Second) / *rate
	t0 := time.Now().Add(20 * time.Millisecond)
	for i := range reqs {
		intended := t0.Add(time.Duration(float64(i) * interval))
		if d := time.Until(intended); d > 0 {
			time.Sleep(d)
		}
		wg.Add(1)
		go func(i int, intended time.Time) {
			defer wg.Done()
			res := &results[i]
			res.lag = int64(time.Since(intended))
			ctx, cancel := context.WithTimeout(
				metadata.AppendToOutgoingContext(context.Background(), "authorization", reqs[i].auth), *timeout)
			defer cancel()
			body := reqs[i].body
			var reply []byte
			err := clients[i%len(clients)].Invoke(ctx, *method, &body, &reply, codec)
			done := time.Now()
			res.latency = int64(done.Sub(intended))
			res.done = done.UnixNano()
			res.code = uint32(status.Code(err))
			if err == nil {
				res.reply = reply
			}
		}(i, intended)
	}
	wg.Wait()
	fmt.Fprintf(os.Stderr, "%.6f\n", time.Since(t0).Seconds())
	if err := writeResults(*out, results); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen: writing results:", err)
		os.Exit(1)
	}
}
