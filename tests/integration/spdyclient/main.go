// A SPDY/3.1 client for corrald's streaming server, built on spdystream (the
// library kubelet's and kubectl's remotecommand and port-forward clients use),
// opening streams the way k8s.io/client-go's remotecommand v4 and portforward
// clients do.  Built offline by the tests from Debian's
// golang-github-docker-spdystream-dev (GOPATH mode).
//
//	spdyclient exec URL [-stdin] [-stderr] [-tty] [-resize WxH] [-status FILE] [-protocols P,..]
//	    error, stdin, stdout, stderr (not with -tty), resize (with -tty) streams;
//	    copies stdin/stdout/stderr; the error stream's content goes to FILE;
//	    -protocols: the versions offered, in order (client-go's SPDY executor offers v5 first)
//	spdyclient portforward [-no-half-close] URL PORT REQUEST...
//	    one data+error stream pair per REQUEST (requestID 0, 1, ...), all at once;
//	    prints one JSON line per request: {"id", "data", "error"}; -no-half-close keeps
//	    the data stream open after the request, as client-go does while its local
//	    connection lives, and reads until the server closes it
//	spdyclient protocol URL VERSION...
//	    only the upgrade: prints the status code and the protocol agreed
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/moby/spdystream"
)

func dial(rawURL string, protocols []string) (net.Conn, *http.Response, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, nil, err
	}
	conn, err := net.DialTimeout("tcp", u.Host, 10*time.Second)
	if err != nil {
		return nil, nil, err
	}
	req, _ := http.NewRequest("POST", rawURL, nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "SPDY/3.1")
	for _, p := range protocols {
		req.Header.Add("X-Stream-Protocol-Version", p)
	}
	if err := req.Write(conn); err != nil {
		conn.Close()
		return nil, nil, err
	}
	reader := bufio.NewReader(conn)
	resp, err := http.ReadResponse(reader, req)
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	if resp.StatusCode == http.StatusSwitchingProtocols && reader.Buffered() > 0 {
		conn.Close()
		return nil, nil, fmt.Errorf("bytes after the upgrade response")
	}
	return conn, resp, nil
}

func connect(rawURL string, protocols []string) (*spdystream.Connection, error) {
	conn, resp, err := dial(rawURL, protocols)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ := io.ReadAll(resp.Body)
		conn.Close()
		return nil, fmt.Errorf("upgrade refused: %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	spdyConn, err := spdystream.NewConnection(conn, false)
	if err != nil {
		conn.Close()
		return nil, err
	}
	go spdyConn.Serve(spdystream.NoOpStreamHandler)
	return spdyConn, nil
}

func createStream(conn *spdystream.Connection, headers http.Header) *spdystream.Stream {
	stream, err := conn.CreateStream(headers, nil, false)
	if err == nil {
		err = stream.WaitTimeout(30 * time.Second) // the SYN_REPLY
	}
	if err != nil {
		fail("create stream %v: %v", headers, err)
	}
	return stream
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "spdyclient: "+format+"\n", args...)
	os.Exit(2)
}

func execCommand(args []string) {
	flags := flag.NewFlagSet("exec", flag.ExitOnError)
	stdin := flags.Bool("stdin", false, "send stdin")
	stderr := flags.Bool("stderr", false, "receive stderr")
	tty := flags.Bool("tty", false, "a terminal")
	resize := flags.String("resize", "", "WxH sent on the resize stream")
	status := flags.String("status", "", "file for the error stream's content")
	offered := flags.String("protocols", "v4.channel.k8s.io,v3.channel.k8s.io,"+
		"v2.channel.k8s.io,channel.k8s.io", "versions offered, in order")
	flags.Parse(args[1:])
	conn, err := connect(args[0], strings.Split(*offered, ","))
	if err != nil {
		fail("%v", err)
	}
	defer conn.Close()

	headers := http.Header{}
	headers.Set("streamType", "error")
	errorStream := createStream(conn, headers)
	var remoteStdin, remoteStderr, resizeStream *spdystream.Stream
	if *stdin {
		headers.Set("streamType", "stdin")
		remoteStdin = createStream(conn, headers)
	}
	headers.Set("streamType", "stdout")
	remoteStdout := createStream(conn, headers)
	if *stderr && !*tty {
		headers.Set("streamType", "stderr")
		remoteStderr = createStream(conn, headers)
	}
	if *tty {
		headers.Set("streamType", "resize")
		resizeStream = createStream(conn, headers)
	}

	errorDone := make(chan []byte)
	go func() {
		message, _ := io.ReadAll(errorStream)
		errorDone <- message
	}()
	if resizeStream != nil && *resize != "" {
		var width, height int
		fmt.Sscanf(*resize, "%dx%d", &width, &height)
		json.NewEncoder(resizeStream).Encode(map[string]int{"Width": width, "Height": height})
	}
	if remoteStdin != nil {
		var once sync.Once
		go func() {
			defer once.Do(func() { remoteStdin.Close() })
			io.Copy(remoteStdin, os.Stdin)
		}()
		go func() { // as client-go: wait for the server to close our stdin stream
			defer once.Do(func() { remoteStdin.Close() })
			io.Copy(io.Discard, remoteStdin)
		}()
	}
	var wg sync.WaitGroup
	copyOut := func(to io.Writer, from io.Reader) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			io.Copy(to, from)
		}()
	}
	copyOut(os.Stdout, remoteStdout)
	if remoteStderr != nil {
		copyOut(os.Stderr, remoteStderr)
	}
	wg.Wait()
	message := <-errorDone
	if *status != "" {
		if err := os.WriteFile(*status, message, 0o644); err != nil {
			fail("%v", err)
		}
	}
}

type result struct {
	ID    int    `json:"id"`
	Data  string `json:"data"`
	Error string `json:"error"`
}

func portForward(args []string) {
	flags := flag.NewFlagSet("portforward", flag.ExitOnError)
	noHalfClose := flags.Bool("no-half-close", false, "keep the data stream open")
	flags.Parse(args)
	args = flags.Args()
	if len(args) < 3 {
		fail("portforward [-no-half-close] URL PORT REQUEST...")
	}
	conn, err := connect(args[0], []string{"portforward.k8s.io"})
	if err != nil {
		fail("%v", err)
	}
	defer conn.Close()
	port := args[1]
	results := make([]result, len(args)-2)
	var wg sync.WaitGroup
	for i, request := range args[2:] {
		headers := http.Header{}
		headers.Set("streamType", "error")
		headers.Set("port", port)
		headers.Set("requestID", strconv.Itoa(i))
		errorStream := createStream(conn, headers)
		errorStream.Close() // as client-go: the client writes nothing on it
		headers.Set("streamType", "data")
		dataStream := createStream(conn, headers)
		wg.Add(1)
		go func(i int, request string) {
			defer wg.Done()
			errorText := make(chan string)
			go func() {
				message, _ := io.ReadAll(errorStream)
				errorText <- string(message)
			}()
			io.WriteString(dataStream, request)
			if !*noHalfClose {
				dataStream.Close() // the request is complete: half-close
			}
			data, _ := io.ReadAll(dataStream)
			results[i] = result{ID: i, Data: string(data), Error: <-errorText}
		}(i, request)
	}
	wg.Wait()
	for _, r := range results {
		line, _ := json.Marshal(r)
		fmt.Println(string(line))
	}
}

func protocol(args []string) {
	conn, resp, err := dial(args[0], args[1:])
	if err != nil {
		fail("%v", err)
	}
	conn.Close()
	fmt.Println(resp.StatusCode, resp.Header.Get("X-Stream-Protocol-Version"))
}

func main() {
	if len(os.Args) < 3 {
		fail("exec|portforward|protocol URL ...")
	}
	switch os.Args[1] {
	case "exec":
		execCommand(os.Args[2:])
	case "portforward":
		portForward(os.Args[2:])
	case "protocol":
		protocol(os.Args[2:])
	default:
		fail("unknown command %q", os.Args[1])
	}
}
