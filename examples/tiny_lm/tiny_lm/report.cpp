// Heatmaps (terminal and SVG) and Markdown tables (see report.hpp).
#include "tiny_lm/report.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <sstream>

namespace tiny_lm {

namespace {

struct rgb {
  double r, g, b;
};

/// Viridis (matplotlib), sampled at five stops and interpolated linearly.
rgb viridis(double x) {
  static const std::array<rgb, 5> stops{
      {{68, 1, 84}, {59, 82, 139}, {33, 145, 140}, {94, 201, 98}, {253, 231, 37}}};
  x = std::clamp(x, 0.0, 1.0) * 4.0;
  const int i = std::min(3, static_cast<int>(x));
  const double f = x - i;
  return {stops[i].r + f * (stops[i + 1].r - stops[i].r),
          stops[i].g + f * (stops[i + 1].g - stops[i].g),
          stops[i].b + f * (stops[i + 1].b - stops[i].b)};
}

std::string hex(const rgb& c) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "#%02x%02x%02x", static_cast<int>(std::lround(c.r)),
                static_cast<int>(std::lround(c.g)), static_cast<int>(std::lround(c.b)));
  return buf;
}

/// The nearest colour of the xterm 256-colour 6x6x6 cube.
int xterm_color(const rgb& c) {
  const auto level = [](double v) {
    return std::clamp(static_cast<int>(std::lround(v / 255.0 * 5.0)), 0, 5);
  };
  return 16 + 36 * level(c.r) + 6 * level(c.g) + level(c.b);
}

std::string xml_escape(const std::string& s) {
  std::string out;
  for (const char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

// The <svg> element, a white background and the figure's title and subtitle.
void svg_begin(std::ostringstream& os, int width, int height, int pad, const std::string& title,
               const std::string& subtitle) {
  os << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << width << "\" height=\"" << height
     << "\" viewBox=\"0 0 " << width << ' ' << height
     << "\" font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\">\n";
  os << "<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>\n";
  os << "<text x=\"" << pad << "\" y=\"28\" font-size=\"18\" font-weight=\"bold\" fill=\"#222\">"
     << xml_escape(title) << "</text>\n";
  os << "<text x=\"" << pad << "\" y=\"48\" font-size=\"12\" fill=\"#555\">" << xml_escape(subtitle)
     << "</text>\n";
}

std::string arrow(double base, double balanced, int decimals) {
  return fixed(base, decimals) + " -> " + fixed(balanced, decimals);
}

double mean_of(const sinkmoe::balance::report& rep, double sinkmoe::balance::layer_report::*field) {
  if (rep.layers.empty()) return 0;
  double s = 0;
  for (const auto& l : rep.layers) s += l.*field;
  return s / double(rep.layers.size());
}

}  // namespace

std::string fixed(double x, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, x);
  return buf;
}

std::string describe_model(const train_config& cfg) {
  const model_config& m = cfg.model;
  std::ostringstream os;
  os << m.layers << " layers x " << m.heads << " heads (head dim " << m.head_dim() << "), width "
     << m.width << ", seq " << m.seq;
  if (m.window > 0) os << ", window " << m.window << " on even layers";
  os << ", batch " << cfg.batch << ", " << cfg.steps << " steps";
  return os.str();
}

std::string describe_shape(const train_config& cfg) {
  return describe_model(cfg) + ", seed " + std::to_string(cfg.seed);
}

std::string terminal_heatmap(const sinkmoe::balance::report& rep, bool color,
                             const std::string& indent) {
  static const char* bars[] = {"▁", "▂", "▃", "▄", "▅", "▆", "▇", "█"};
  std::ostringstream os;
  const int heads = rep.layers.empty() ? 0 : static_cast<int>(rep.layers[0].importance.size());
  os << indent << "         ";
  for (int h = 0; h < heads; ++h) os << (h % 10) << ' ';
  os << " (head; bar height = importance, 0..1)\n";
  for (std::size_t l = 0; l < rep.layers.size(); ++l) {
    const auto& lr = rep.layers[l];
    char label[32];
    std::snprintf(label, sizeof label, "layer %-2zu ", l);
    os << indent << label;
    for (const double imp : lr.importance) {
      const int level = std::clamp(static_cast<int>(std::ceil(imp * 8.0)), 1, 8);
      if (color) os << "\033[38;5;" << xterm_color(viridis(imp)) << 'm';
      os << bars[level - 1] << bars[level - 1];
      if (color) os << "\033[0m";
    }
    os << "  CV " << fixed(lr.cv, 3) << "  eff " << fixed(lr.effective_heads, 2) << "/" << heads
       << "  dormant " << fixed(100.0 * lr.dormant_fraction, 0) << "%\n";
  }
  return os.str();
}

std::string heatmap_svg(const std::vector<heatmap_panel>& panels, int columns,
                        const std::string& title, const std::string& subtitle) {
  if (panels.empty()) return "";
  const int layers = static_cast<int>(panels[0].rep.layers.size());
  const int heads = layers ? static_cast<int>(panels[0].rep.layers[0].importance.size()) : 0;
  const int cell_w = 38, cell_h = 30, label_w = 64, stats_w = 150, pad = 24;
  const int panel_w = label_w + heads * cell_w + stats_w;
  const int panel_h = 34 + 18 + layers * cell_h + 12;
  const int rows = (static_cast<int>(panels.size()) + columns - 1) / columns;
  const int top = 64, bar_h = 72;
  const int width = std::max(pad * 2 + columns * panel_w + (columns - 1) * pad, 2 * pad + 520);
  const int height = top + rows * panel_h + (rows - 1) * 8 + bar_h + pad;

  std::ostringstream os;
  svg_begin(os, width, height, pad, title, subtitle);

  for (std::size_t p = 0; p < panels.size(); ++p) {
    const int px = pad + static_cast<int>(p % columns) * (panel_w + pad);
    const int py = top + static_cast<int>(p / columns) * (panel_h + 8);
    const auto& rep = panels[p].rep;
    os << "<g transform=\"translate(" << px << ',' << py << ")\">\n";
    os << "<text x=\"0\" y=\"18\" font-size=\"14\" font-weight=\"bold\" fill=\"#222\">"
       << xml_escape(panels[p].title) << "</text>\n";
    os << "<text x=\"" << label_w + heads * cell_w + 10 << "\" y=\"" << 34 + 12
       << "\" font-size=\"10\" fill=\"#777\">CV · eff. heads · dormant</text>\n";
    for (int h = 0; h < heads; ++h)
      os << "<text x=\"" << label_w + h * cell_w + cell_w / 2 << "\" y=\"" << 34 + 12
         << "\" font-size=\"10\" fill=\"#555\" text-anchor=\"middle\">h" << h << "</text>\n";
    for (int l = 0; l < static_cast<int>(rep.layers.size()); ++l) {
      const auto& lr = rep.layers[l];
      const int y = 34 + 18 + l * cell_h;
      os << "<text x=\"" << label_w - 8 << "\" y=\"" << y + cell_h / 2 + 4
         << "\" font-size=\"11\" fill=\"#333\" text-anchor=\"end\">layer " << l << "</text>\n";
      for (int h = 0; h < heads; ++h) {
        const double imp = lr.importance[h];
        const rgb c = viridis(imp);
        const double luminance = (0.299 * c.r + 0.587 * c.g + 0.114 * c.b) / 255.0;
        const int x = label_w + h * cell_w;
        os << "<rect x=\"" << x << "\" y=\"" << y << "\" width=\"" << cell_w - 2 << "\" height=\""
           << cell_h - 2 << "\" rx=\"3\" fill=\"" << hex(c) << "\"><title>layer " << l << ", head "
           << h << ": importance " << fixed(imp, 4) << "</title></rect>\n";
        os << "<text x=\"" << x + (cell_w - 2) / 2 << "\" y=\"" << y + cell_h / 2 + 3
           << "\" font-size=\"10\" text-anchor=\"middle\" fill=\""
           << (luminance > 0.5 ? "#111" : "#fff") << "\">" << fixed(imp, 2) << "</text>\n";
      }
      os << "<text x=\"" << label_w + heads * cell_w + 10 << "\" y=\"" << y + cell_h / 2 + 4
         << "\" font-size=\"11\" fill=\"#333\">" << fixed(lr.cv, 3) << " · "
         << fixed(lr.effective_heads, 2) << " · " << fixed(100 * lr.dormant_fraction, 0)
         << "%</text>\n";
    }
    os << "</g>\n";
  }

  // Colour bar.
  const int bar_y = top + rows * panel_h + (rows - 1) * 8 + 10,
            bar_w = std::min(320, width - 2 * pad);
  os << "<defs><linearGradient id=\"viridis\" x1=\"0\" x2=\"1\" y1=\"0\" y2=\"0\">\n";
  for (int i = 0; i <= 8; ++i)
    os << "<stop offset=\"" << fixed(i / 8.0, 3) << "\" stop-color=\"" << hex(viridis(i / 8.0))
       << "\"/>\n";
  os << "</linearGradient></defs>\n";
  os << "<rect x=\"" << pad << "\" y=\"" << bar_y << "\" width=\"" << bar_w
     << "\" height=\"12\" fill=\"url(#viridis)\"/>\n";
  for (int i = 0; i <= 4; ++i)
    os << "<text x=\"" << pad + bar_w * i / 4 << "\" y=\"" << bar_y + 26
       << "\" font-size=\"10\" fill=\"#555\" text-anchor=\"middle\">" << fixed(i / 4.0, 2)
       << "</text>\n";
  os << "<text x=\"" << pad << "\" y=\"" << bar_y + 44
     << "\" font-size=\"11\" fill=\"#555\">head importance = mean router value G over validation "
        "tokens (dormant: below 0.1)</text>\n";
  os << "</svg>\n";
  return os.str();
}

std::string line_chart_svg(const std::vector<chart_panel>& panels, const std::string& title,
                           const std::string& subtitle, const std::string& x_label,
                           const std::string& y_label) {
  // Tableau-10 colours: series keep their colour across panels (same index, same meaning).
  static const char* const colors[] = {"#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
                                       "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"};
  const int plot_w = 360, plot_h = 220, left = 56, right = 16, top_gap = 30, bottom = 42, pad = 24;
  const int panel_w = left + plot_w + right, panel_h = top_gap + plot_h + bottom;
  const int columns = std::min<int>(3, std::max<int>(1, static_cast<int>(panels.size())));
  const int rows = (static_cast<int>(panels.size()) + columns - 1) / columns;
  std::size_t most_series = 0;
  for (const chart_panel& p : panels) most_series = std::max(most_series, p.series.size());
  const int legend_h = 18 * static_cast<int>(most_series) + 12, top = 64;
  const int width = pad * 2 + columns * panel_w + (columns - 1) * pad;
  const int height = top + rows * panel_h + legend_h + pad;
  std::ostringstream os;
  svg_begin(os, width, height, pad, title, subtitle);
  for (std::size_t p = 0; p < panels.size(); ++p) {
    const int px = pad + static_cast<int>(p % columns) * (panel_w + pad);
    const int py = top + static_cast<int>(p / columns) * panel_h;
    double x0 = 0, x1 = 1, y0 = 0, y1 = 0;
    bool any = false;
    for (const chart_series& s : panels[p].series)
      for (std::size_t i = 0; i < s.x.size(); ++i) {
        x0 = any ? std::min(x0, s.x[i]) : s.x[i];
        x1 = any ? std::max(x1, s.x[i]) : s.x[i];
        y1 = std::max({y1, s.hi[i], s.mean[i]});
        any = true;
      }
    if (x1 <= x0) x1 = x0 + 1;
    if (y1 <= y0) y1 = 1;
    y1 *= 1.05;
    const auto sx = [&](double x) { return left + (x - x0) / (x1 - x0) * plot_w; };
    const auto sy = [&](double y) { return top_gap + plot_h - (y - y0) / (y1 - y0) * plot_h; };
    os << "<g transform=\"translate(" << px << ',' << py << ")\">\n";
    os << "<text x=\"" << left << "\" y=\"18\" font-size=\"14\" font-weight=\"bold\" fill=\"#222\">"
       << xml_escape(panels[p].title) << "</text>\n";
    os << "<rect x=\"" << left << "\" y=\"" << top_gap << "\" width=\"" << plot_w << "\" height=\""
       << plot_h << "\" fill=\"none\" stroke=\"#bbb\"/>\n";
    for (int t = 0; t <= 4; ++t) {  // grid and tick labels
      const double yv = y0 + (y1 - y0) * t / 4, xv = x0 + (x1 - x0) * t / 4;
      os << "<line x1=\"" << left << "\" x2=\"" << left + plot_w << "\" y1=\"" << sy(yv)
         << "\" y2=\"" << sy(yv) << "\" stroke=\"#eee\"/>\n";
      os << "<text x=\"" << left - 6 << "\" y=\"" << sy(yv) + 4
         << "\" font-size=\"10\" fill=\"#555\" text-anchor=\"end\">" << fixed(yv, 2) << "</text>\n";
      os << "<text x=\"" << sx(xv) << "\" y=\"" << top_gap + plot_h + 14
         << "\" font-size=\"10\" fill=\"#555\" text-anchor=\"middle\">" << fixed(xv, 0)
         << "</text>\n";
    }
    os << "<text x=\"" << left + plot_w / 2 << "\" y=\"" << top_gap + plot_h + 32
       << "\" font-size=\"11\" fill=\"#333\" text-anchor=\"middle\">" << xml_escape(x_label)
       << "</text>\n";
    os << "<text transform=\"translate(14," << top_gap + plot_h / 2
       << ") rotate(-90)\" font-size=\"11\" fill=\"#333\" text-anchor=\"middle\">"
       << xml_escape(y_label) << "</text>\n";
    for (std::size_t k = 0; k < panels[p].series.size(); ++k) {
      const chart_series& s = panels[p].series[k];
      if (s.x.empty()) continue;
      const char* color = colors[k % 10];
      std::ostringstream band, line;
      for (std::size_t i = 0; i < s.x.size(); ++i) band << sx(s.x[i]) << ',' << sy(s.hi[i]) << ' ';
      for (std::size_t i = s.x.size(); i-- > 0;) band << sx(s.x[i]) << ',' << sy(s.lo[i]) << ' ';
      for (std::size_t i = 0; i < s.x.size(); ++i)
        line << sx(s.x[i]) << ',' << sy(s.mean[i]) << ' ';
      os << "<polygon points=\"" << band.str() << "\" fill=\"" << color
         << "\" fill-opacity=\"0.15\" stroke=\"none\"/>\n";
      os << "<polyline points=\"" << line.str() << "\" fill=\"none\" stroke=\"" << color
         << "\" stroke-width=\"1.8\"><title>" << xml_escape(s.name) << "</title></polyline>\n";
    }
    os << "</g>\n";
  }
  // Legend: the series of the panel with the most.
  const chart_panel* legend = nullptr;
  for (const chart_panel& p : panels)
    if (!legend || p.series.size() > legend->series.size()) legend = &p;
  const int ly = top + rows * panel_h + 8;
  for (std::size_t k = 0; legend && k < legend->series.size(); ++k) {
    const int y = ly + 18 * static_cast<int>(k);
    os << "<rect x=\"" << pad << "\" y=\"" << y << "\" width=\"22\" height=\"4\" fill=\""
       << colors[k % 10] << "\"/>\n";
    os << "<text x=\"" << pad + 30 << "\" y=\"" << y + 6 << "\" font-size=\"11\" fill=\"#333\">"
       << xml_escape(legend->series[k].name) << "</text>\n";
  }
  os << "</svg>\n";
  return os.str();
}

std::string run_markdown(const run_summary& run) {
  std::ostringstream os;
  const auto& v = run.val;
  const int heads = run.config.model.heads;
  os << "# tiny_lm run: " << run.label << "\n\n";
  os << describe_shape(run.config) << "; lambda " << run.config.lambda << ", shared heads "
     << run.config.shared_heads
     << "; data: " << (run.config.data_path.empty() ? "built-in corpus" : run.config.data_path)
     << "\n\n";
  os << "| validation loss | next-byte acc % | recall acc % | mean CV | balance loss term |\n";
  os << "|---|---|---|---|---|\n";
  os << "| " << fixed(v.loss, 4) << " | " << fixed(100 * v.accuracy, 1) << " | "
     << (v.answers ? fixed(100 * v.recall_accuracy, 1) : std::string("n/a")) << " | "
     << fixed(v.balance.mean_cv, 3) << " | " << fixed(v.balance.loss, 5) << " |\n\n";
  os << "| layer | CV | effective heads (of " << heads << ") | dormant % | importance per head |\n";
  os << "|---|---|---|---|---|\n";
  for (std::size_t l = 0; l < v.balance.layers.size(); ++l) {
    const auto& lr = v.balance.layers[l];
    os << "| " << l << " | " << fixed(lr.cv, 3) << " | " << fixed(lr.effective_heads, 2) << " | "
       << fixed(100 * lr.dormant_fraction, 0) << " | ";
    for (std::size_t h = 0; h < lr.importance.size(); ++h)
      os << (h ? " " : "") << fixed(lr.importance[h], 2);
    os << " |\n";
  }
  if (run.speed.steps > 0) {
    os << "\nSpeed: " << fixed(run.speed.tokens_per_second, 0) << " tokens/s, "
       << fixed(1000 * run.speed.step_seconds, 1) << " ms/step; step time: attention "
       << fixed(100 * run.speed.attention_share, 1) << "%, balancing "
       << fixed(100 * run.speed.balance_share, 2) << "%, rest "
       << fixed(100 * (1 - run.speed.attention_share - run.speed.balance_share), 1) << "%\n";
  }
  return os.str();
}

std::string compare_markdown(const std::vector<std::pair<run_summary, run_summary>>& pairs) {
  std::ostringstream os;
  if (pairs.empty()) return "";
  const train_config& cfg = pairs[0].first.config;
  const int heads = cfg.model.heads;
  const bool recall = pairs[0].first.val.answers > 0;
  os << "Base (lambda = 0) -> balanced (lambda = " << pairs[0].second.config.lambda
     << ", shared heads " << pairs[0].second.config.shared_heads << "); " << describe_shape(cfg)
     << ". Validation: " << pairs[0].first.val.tokens << " tokens"
     << (recall ? ", " + std::to_string(pairs[0].first.val.answers) + " recall answers" : "")
     << ".\n\n";
  os << "| mechanism | val loss | next-byte acc % |" << (recall ? " recall acc % |" : "")
     << " mean CV | eff. heads (of " << heads << ") | dormant % |\n";
  os << "|---|---|---|" << (recall ? "---|" : "") << "---|---|---|\n";
  for (const auto& [base, bal] : pairs) {
    os << "| " << title_of(base.config.model.mech) << " | " << arrow(base.val.loss, bal.val.loss, 4)
       << " | " << arrow(100 * base.val.accuracy, 100 * bal.val.accuracy, 1) << " | ";
    if (recall)
      os << arrow(100 * base.val.recall_accuracy, 100 * bal.val.recall_accuracy, 1) << " | ";
    using lr_t = sinkmoe::balance::layer_report;
    os << arrow(base.val.balance.mean_cv, bal.val.balance.mean_cv, 3) << " | "
       << arrow(mean_of(base.val.balance, &lr_t::effective_heads),
                mean_of(bal.val.balance, &lr_t::effective_heads), 2)
       << " | "
       << arrow(100 * mean_of(base.val.balance, &lr_t::dormant_fraction),
                100 * mean_of(bal.val.balance, &lr_t::dormant_fraction), 0)
       << " |\n";
  }
  os << "\nPer layer (base -> balanced):\n\n";
  os << "| mechanism | layer | CV | eff. heads (of " << heads << ") | dormant % |\n";
  os << "|---|---|---|---|---|\n";
  for (const auto& [base, bal] : pairs) {
    for (std::size_t l = 0; l < base.val.balance.layers.size(); ++l) {
      const auto& a = base.val.balance.layers[l];
      const auto& b = bal.val.balance.layers[l];
      os << "| " << title_of(base.config.model.mech) << " | " << l << " | " << arrow(a.cv, b.cv, 3)
         << " | " << arrow(a.effective_heads, b.effective_heads, 2) << " | "
         << arrow(100 * a.dormant_fraction, 100 * b.dormant_fraction, 0) << " |\n";
    }
  }
  os << "\nTraining speed (CPU backend; share of step time):\n\n";
  os << "| run | tokens/s | ms/step | attention % | balancing % | rest % |\n";
  os << "|---|---|---|---|---|---|\n";
  for (const auto& pair : pairs)
    for (const run_summary* r : {&pair.first, &pair.second})
      os << "| " << r->label << " | " << fixed(r->speed.tokens_per_second, 0) << " | "
         << fixed(1000 * r->speed.step_seconds, 1) << " | "
         << fixed(100 * r->speed.attention_share, 1) << " | "
         << fixed(100 * r->speed.balance_share, 2) << " | "
         << fixed(100 * (1 - r->speed.attention_share - r->speed.balance_share), 1) << " |\n";
  return os.str();
}

}  // namespace tiny_lm
