package bench

import (
	"fmt"
	"image"
	"image/color"
	"image/png"
	"os"
	"strings"
)

// Plot geometry: two panels (RSS above, requests/s below) sharing the time axis.
const (
	plotW, plotH   = 960, 600
	plotMargin     = 60
	panelGap       = 40
	glyphScale     = 3
	gridLines      = 4
	plotSeriesDots = 2
)

var (
	colorBackground = color.RGBA{255, 255, 255, 255}
	colorAxis       = color.RGBA{60, 60, 60, 255}
	colorGrid       = color.RGBA{225, 225, 225, 255}
	colorRSS        = color.RGBA{200, 40, 40, 255}
	colorRPS        = color.RGBA{30, 90, 200, 255}
	colorWarmup     = color.RGBA{150, 150, 150, 255}
)

// writePlot draws RSS (MB, red, top) and requests/s (blue, bottom) over
// time (s), with a grey line at the end of warm-up, as a PNG.
func writePlot(path string, samples []SoakSample, warmup float64) error {
	img := image.NewRGBA(image.Rect(0, 0, plotW, plotH))
	fill(img, img.Bounds(), colorBackground)
	tMax := 1.0
	for _, s := range samples {
		tMax = max(tMax, s.Seconds)
	}
	panelH := (plotH - 2*plotMargin - panelGap) / 2
	top := image.Rect(plotMargin, plotMargin, plotW-plotMargin, plotMargin+panelH)
	bottom := image.Rect(plotMargin, top.Max.Y+panelGap, plotW-plotMargin, top.Max.Y+panelGap+panelH)
	panel(img, top, "RSS MB", samples, tMax, warmup, colorRSS, func(s SoakSample) float64 { return s.RSSMB })
	panel(img, bottom, "REQ/S", samples, tMax, warmup, colorRPS, func(s SoakSample) float64 { return s.RPS })
	text(img, bottom.Max.X-60, bottom.Max.Y+12, fmt.Sprintf("%.0f S", tMax), colorAxis)
	text(img, bottom.Min.X, bottom.Max.Y+12, "0", colorAxis)

	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("writing the plot: %w", err)
	}
	if err := png.Encode(f, img); err != nil {
		f.Close()
		return fmt.Errorf("writing the plot %s: %w", path, err)
	}
	return f.Close()
}

// panel draws one series in r, its y axis from 0 to 1.2 × the series' maximum.
func panel(img *image.RGBA, r image.Rectangle, label string, samples []SoakSample, tMax, warmup float64, c color.RGBA, value func(SoakSample) float64) {
	yMax := 1.0
	for _, s := range samples {
		yMax = max(yMax, value(s))
	}
	yMax *= 1.2
	for i := 0; i <= gridLines; i++ {
		y := r.Max.Y - i*r.Dy()/gridLines
		fill(img, image.Rect(r.Min.X, y, r.Max.X, y+1), colorGrid)
		text(img, 2, y-7, fmt.Sprintf("%.0f", yMax*float64(i)/gridLines), colorAxis)
	}
	fill(img, image.Rect(r.Min.X, r.Min.Y, r.Min.X+1, r.Max.Y), colorAxis)
	fill(img, image.Rect(r.Min.X, r.Max.Y, r.Max.X, r.Max.Y+1), colorAxis)
	wx := r.Min.X + int(warmup/tMax*float64(r.Dx()))
	if wx < r.Max.X {
		fill(img, image.Rect(wx, r.Min.Y, wx+1, r.Max.Y), colorWarmup)
	}
	text(img, r.Min.X+8, r.Min.Y-20, label, c)
	px := func(s SoakSample) image.Point {
		return image.Pt(r.Min.X+int(s.Seconds/tMax*float64(r.Dx())), r.Max.Y-int(value(s)/yMax*float64(r.Dy())))
	}
	for i, s := range samples {
		p := px(s)
		fill(img, image.Rect(p.X-plotSeriesDots, p.Y-plotSeriesDots, p.X+plotSeriesDots+1, p.Y+plotSeriesDots+1), c)
		if i > 0 {
			line(img, px(samples[i-1]), p, c)
		}
	}
}

func fill(img *image.RGBA, r image.Rectangle, c color.RGBA) {
	r = r.Intersect(img.Bounds())
	for y := r.Min.Y; y < r.Max.Y; y++ {
		for x := r.Min.X; x < r.Max.X; x++ {
			img.SetRGBA(x, y, c)
		}
	}
}

// line draws a 2-pixel line from a to b (Bresenham).
func line(img *image.RGBA, a, b image.Point, c color.RGBA) {
	dx, dy := abs(b.X-a.X), -abs(b.Y-a.Y)
	sx, sy := sign(b.X-a.X), sign(b.Y-a.Y)
	e := dx + dy
	for {
		fill(img, image.Rect(a.X, a.Y, a.X+2, a.Y+2), c)
		if a == b {
			return
		}
		if e2 := 2 * e; e2 >= dy {
			e += dy
			a.X += sx
		} else {
			e += dx
			a.Y += sy
		}
	}
}

func abs(n int) int {
	if n < 0 {
		return -n
	}
	return n
}

func sign(n int) int {
	switch {
	case n < 0:
		return -1
	case n > 0:
		return 1
	}
	return 0
}

// glyphs is a 3×5 pixel font for the plot's labels: digits and the few
// capitals the labels use.
var glyphs = map[rune]string{
	'0': "111101101101111", '1': "010110010010111", '2': "111001111100111", '3': "111001111001111",
	'4': "101101111001001", '5': "111100111001111", '6': "111100111101111", '7': "111001001001001",
	'8': "111101111101111", '9': "111101111001111", '.': "000000000000010", '/': "001001010100100",
	'B': "110101110101110", 'E': "111100110100111", 'M': "101111111101101", 'Q': "111101101111001",
	'R': "110101110101101", 'S': "111100111001111", ' ': "000000000000000",
}

// text draws s (digits and the capitals above) with its top-left at x, y.
func text(img *image.RGBA, x, y int, s string, c color.RGBA) {
	for _, ch := range strings.ToUpper(s) {
		g, ok := glyphs[ch]
		if !ok {
			g = glyphs[' ']
		}
		for i, bit := range g {
			if bit == '1' {
				gx, gy := x+(i%3)*glyphScale, y+(i/3)*glyphScale
				fill(img, image.Rect(gx, gy, gx+glyphScale, gy+glyphScale), c)
			}
		}
		x += 4 * glyphScale
	}
}
