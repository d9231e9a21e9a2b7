# verve vs. baseline req/s per round, from the CSV perf/compare.sh writes:
#   gnuplot -e "csv='perf/out/compare-X.csv'; out='perf/compare.svg'; subtitle='...'" perf/plot_compare.gnuplot
# CSV columns (with a header line): round,baseline_rps,verve_rps,ratio
if (!exists("csv")) csv = "perf/out/compare.csv"
if (!exists("out")) out = "perf/compare.svg"
if (!exists("subtitle")) subtitle = ""
set terminal svg size 900,520 dynamic enhanced font "sans,12" background "white"
set output out
set datafile separator ","
set datafile columnheaders
stats csv using 2 nooutput name "B"
stats csv using 3 nooutput name "V"
ymax = (B_max > V_max ? B_max : V_max) * 1.6
set title "verve vs. bare may\\_minihttp baseline (wrk, random u32 ids)\n{/*0.8 ".subtitle."}"
set style data histogram
set style histogram cluster gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set xlabel "round"
set ylabel "requests per second"
set yrange [0:ymax]
set xrange [-0.6:B_records - 0.4]
set ytics nomirror
set y2label "verve / baseline"
set y2range [0:1.15]
set y2tics 0.1
set grid ytics
set key outside bottom center horizontal
plot csv using 2:xtic(1) title "baseline" lc rgb "#9e9e9e", \
     '' using 3 title "verve" lc rgb "#1f77b4", \
     '' using ($0):4 axes x1y2 with linespoints lw 2 pt 7 lc rgb "#d62728" title "verve/baseline", \
     '' using ($0):4:(sprintf("%.3f", $4)) axes x1y2 with labels offset 0,1 notitle
