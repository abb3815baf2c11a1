// vcsim for esxi2ami.migrate tests: govmomi 0.24.2's simulator (Debian's
// golang-github-vmware-govmomi-dev) with the overlay/ files added by `go build -overlay`
// (ExportVm, CreateDescriptor, realistic export leases, NFC streaming faults, guest shutdown,
// VMs from a JSON config). See README.md.
package main

import (
	"bufio"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"log"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/vmware/govmomi/simulator"
)

func main() {
	listen := flag.String("l", "127.0.0.1:8989", "listen address (port 0 = random)")
	login := flag.String("u", "", "require this user:pass (default: any non-empty login)")
	api := flag.String("api", "7.0.3.0", "advertised API version, e.g. 7.0.3.0, 8.0.3.0")
	trace := flag.Bool("trace", false, "dump SOAP traffic to stderr")
	config := flag.String("config", "", "JSON file with VMs to add to the default VPX inventory (see README.md)")
	defaultDisk := flag.String("default-disk", "", "stream-optimized VMDK served for disks of VMs without a disk file")
	leaseTimeout := flag.Float64("lease-timeout", 300, "seconds without HttpNfcLeaseProgress before an NFC lease fails")
	rateLimit := flag.Int64("rate-limit", 0, "NFC download rate limit in bytes/s per transfer (0 = none)")
	cutAfter := flag.Int64("cut-after", 0, "drop NFC downloads after this many bytes (0 = never)")
	cutCount := flag.Int64("cut-count", 0, "cut only the next N downloads (0 = all)")
	shutdownDelay := flag.Float64("shutdown-delay", 1, "seconds between ShutdownGuest and the VM being powered off")
	watchStdin := flag.Bool("watch-stdin", false, "exit when stdin reaches EOF (the parent process died)")
	cleanup := flag.String("cleanup-dir", "", "directory to remove on exit (the launcher's work directory)")
	tlsCert := flag.String("tls-cert", "", "PEM certificate (chain) to serve instead of Go's self-signed test certificate")
	tlsKey := flag.String("tls-key", "", "PEM private key of -tls-cert")
	flag.Parse()
	if *cleanup != "" {
		defer os.RemoveAll(*cleanup)
	}
	simulator.Trace = *trace

	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "vcsim:", err)
		os.Exit(2) // the launcher reads the log, then removes the directory
	}
	if err := simulator.SetFaults(simulator.SimFaults{
		LeaseTimeout: *leaseTimeout, RateLimit: *rateLimit, CutAfter: *cutAfter, CutCount: *cutCount,
		ShutdownDelay: *shutdownDelay,
	}); err != nil {
		fail(err)
	}
	var cfg *simulator.SimConfig
	if *config != "" {
		var err error
		if cfg, err = simulator.LoadConfig(*config); err != nil {
			fail(err)
		}
	}

	model := simulator.VPX() // 1 DC, 1 cluster (3 hosts) + 1 standalone host, 4 VMs, LocalDS_0 in $TMPDIR
	model.ServiceContent.About.ApiVersion = *api
	if v := strings.Split(*api, "."); len(v) >= 3 {
		about := &model.ServiceContent.About
		about.Version = strings.Join(v[:3], ".")
		about.Build = "20395099"
		about.FullName = fmt.Sprintf("VMware vCenter Server %s build-%s (govmomi simulator)", about.Version, about.Build)
		about.LicenseProductVersion = v[0] + ".0"
	}
	if err := model.Create(); err != nil {
		fail(err)
	}
	defer model.Remove()
	if err := model.InitDefaultVMs(*defaultDisk); err != nil {
		fail(err)
	}
	if cfg != nil {
		if err := model.ApplyConfig(cfg); err != nil {
			model.Remove()
			fail(err)
		}
	}
	model.Service.Listen = &url.URL{Host: *listen}
	if u := strings.SplitN(*login, ":", 2); len(u) == 2 {
		model.Service.Listen.User = url.UserPassword(u[0], u[1])
	}
	model.Service.TLS = new(tls.Config) // default: Go's self-signed httptest cert (127.0.0.1, ::1, example.com)
	if *tlsCert != "" || *tlsKey != "" {
		cert, err := tls.LoadX509KeyPair(*tlsCert, *tlsKey)
		if err != nil {
			fail(fmt.Errorf("-tls-cert/-tls-key: %v", err))
		}
		model.Service.TLS.Certificates = []tls.Certificate{cert}
	}
	model.Service.HandleFunc("/_sim/faults", simulator.ServeFaults)
	s := model.Service.NewServer()
	defer s.Close()
	fmt.Println(s.URL.String())
	log.Printf("vcsim ready: api %s, lease timeout %gs", *api, *leaseTimeout)

	done := make(chan os.Signal, 1)
	signal.Notify(done, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	if *watchStdin {
		go func() {
			_, _ = io.Copy(io.Discard, bufio.NewReader(os.Stdin))
			log.Printf("vcsim: stdin closed, exiting")
			done <- syscall.SIGTERM
		}()
	}
	<-done
}
