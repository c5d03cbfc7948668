package dps

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2023, 11, 14, 22, 13, 20, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
	}{
		{"", 0},
		{"3", 3 * time.Second},
		{" 5 ", 5 * time.Second},
		{"0", 0},
		{"-1", 0},
		{"1.5", 0},
		{"soon", 0},
		{"86401", maxRetryAfter},
		{"99999999999999999999999", maxRetryAfter},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		{now.Add(-time.Minute).Format(http.TimeFormat), 0},
		{now.Add(48 * time.Hour).Format(http.TimeFormat), maxRetryAfter},
		{"Tue, 14 Nov 2023 22:13:30 GMT", 10 * time.Second},
		{"Tuesday, 14-Nov-23 22:13:30 GMT", 10 * time.Second}, // RFC 850, also allowed by RFC 9110
	}
	for _, tt := range tests {
		if got := parseRetryAfter(tt.in, now); got != tt.want {
			t.Errorf("parseRetryAfter(%q): got %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestCleanText(t *testing.T) {
	tests := []struct {
		in, want string
		max      int
	}{
		{"plain", "plain", 100},
		{"two\nlines\tand\x00nul", "two lines and nul", 100},
		{"  padded  ", "padded", 100},
		{"héllo wörld", "hé…", 3}, // cut on a rune boundary
		{"abcdef", "abc…", 3},
		{"token SharedAccessSignature sr=x&sig=abc%3D&se=1&skn=registration end", "token SharedAccessSignature [redacted] end", 100},
		{`{"auth":"SharedAccessSignature sr=x&sig=abc"}`, `{"auth":"SharedAccessSignature [redacted]"}`, 100},
		{"a sig=abc&se=1 b sig=def", "a sig=[redacted]&se=1 b sig=[redacted]", 100},
		{"bad\xffutf8", "bad utf8", 100},
	}
	for _, tt := range tests {
		if got := cleanText(tt.in, tt.max); got != tt.want {
			t.Errorf("cleanText(%q, %d): got %q, want %q", tt.in, tt.max, got, tt.want)
		}
	}
}

func TestFillErrorDetails(t *testing.T) {
	tests := []struct {
		name      string
		body      string
		truncated bool
		header    string
		wantCode  int
		wantMsg   string
		wantTrack string
	}{
		{name: "dps body", body: `{"errorCode":401002,"trackingId":"t-1","message":"Unauthorized","timestampUtc":"x"}`, wantCode: 401002, wantMsg: "Unauthorized", wantTrack: "t-1"},
		{name: "string code", body: `{"errorCode":"404201"}`, wantCode: 404201},
		{name: "header code", body: ``, header: "429001", wantCode: 429001},
		{name: "body code wins", body: `{"errorCode":400000}`, header: "401002", wantCode: 400000},
		{name: "html", body: "<html>\n<body>nope</body>", wantMsg: "<html> [truncated]"},
		{name: "truncated json is not parsed", body: `{"errorCode":401002,"message":"x"`, truncated: true, wantMsg: `{"errorCode":401002,"message":"x" [truncated]`},
		{name: "long line", body: strings.Repeat("y", 400), wantMsg: strings.Repeat("y", maxMessageLen) + "… [truncated]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{}
			if tt.header != "" {
				h.Set(HeaderErrorCode, tt.header)
			}
			e := &Error{}
			fillErrorDetails(e, h, []byte(tt.body), tt.truncated)
			if e.Code != tt.wantCode || e.Message != tt.wantMsg || e.TrackingID != tt.wantTrack {
				t.Errorf("got code %d message %q tracking %q, want %d %q %q", e.Code, e.Message, e.TrackingID, tt.wantCode, tt.wantMsg, tt.wantTrack)
			}
		})
	}
}
