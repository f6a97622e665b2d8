// tiny_lm study (see study.hpp): the plan, the resumable loop over runs, and the report.
#include "tiny_lm/study.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>
#include <sstream>

#include "tiny_lm/checkpoint.hpp"
#include "tiny_lm/report.hpp"

namespace fs = std::filesystem;

namespace tiny_lm {

namespace {

std::string format_real(double x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", x);
  return buf;
}

/// A run's final validation metrics, as stored in its final.txt.
struct run_record {
  std::string name;
  mechanism mech = mechanism::vanilla;
  double lambda = 0;
  int shared = 0;
  std::uint64_t seed = 0;
  double val_loss = 0, accuracy = 0, recall_accuracy = 0;
  long long tokens = 0, answers = 0;
  int heads = 0;
  struct layer {
    double cv = 0, effective_heads = 0, dormant01 = 0, dormant02 = 0, first_key_mass = 0,
           first_key_sink_heads = 0;
    std::vector<double> importance;
  };
  std::vector<layer> layers;

  /// The paper's collapse: a layer with a dormant head (importance below 0.1), or with fewer
  /// effective heads than three quarters of the heads.
  [[nodiscard]] bool collapsed() const {
    for (const layer& l : layers)
      if (l.dormant01 > 0 || l.effective_heads < 0.75 * heads) return true;
    return false;
  }
  [[nodiscard]] double mean_cv() const {
    double s = 0;
    for (const layer& l : layers) s += l.cv;
    return layers.empty() ? 0 : s / layers.size();
  }
  [[nodiscard]] double min_effective_heads() const {
    double m = heads;
    for (const layer& l : layers) m = std::min(m, l.effective_heads);
    return m;
  }
  [[nodiscard]] double max_dormant(bool below_02) const {
    double m = 0;
    for (const layer& l : layers) m = std::max(m, below_02 ? l.dormant02 : l.dormant01);
    return m;
  }
  [[nodiscard]] double mean_first_key_mass() const {
    double s = 0;
    for (const layer& l : layers) s += l.first_key_mass;
    return layers.empty() ? 0 : s / layers.size();
  }
};

std::string record_text(const run_record& r) {
  std::ostringstream os;
  os.precision(9);
  os << "name=" << r.name << "\nmechanism=" << name_of(r.mech) << "\nlambda=" << r.lambda
     << "\nshared=" << r.shared << "\nseed=" << r.seed << "\nval_loss=" << r.val_loss
     << "\naccuracy=" << r.accuracy << "\nrecall_accuracy=" << r.recall_accuracy
     << "\ntokens=" << r.tokens << "\nanswers=" << r.answers << "\nheads=" << r.heads
     << "\nlayers=" << r.layers.size() << "\n";
  for (std::size_t l = 0; l < r.layers.size(); ++l) {
    const auto& L = r.layers[l];
    os << "layer" << l << "=" << L.cv << ' ' << L.effective_heads << ' ' << L.dormant01 << ' '
       << L.dormant02 << ' ' << L.first_key_mass << ' ' << L.first_key_sink_heads << "\n";
    os << "importance" << l << "=";
    for (std::size_t h = 0; h < L.importance.size(); ++h) os << (h ? " " : "") << L.importance[h];
    os << "\n";
  }
  return os.str();
}

run_record parse_record(const std::string& text, const std::string& where) {
  std::map<std::string, std::string> kv;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);)
    if (const auto eq = line.find('='); eq != std::string::npos)
      kv[line.substr(0, eq)] = line.substr(eq + 1);
  const auto get = [&](const std::string& key) -> const std::string& {
    const auto it = kv.find(key);
    if (it == kv.end()) throw usage_error(where + ": missing '" + key + "' (a damaged study?)");
    return it->second;
  };
  run_record r;
  r.name = get("name");
  const auto m = parse_mechanism(get("mechanism"));
  if (!m) throw usage_error(where + ": unknown mechanism '" + get("mechanism") + "'");
  r.mech = *m;
  r.lambda = std::stod(get("lambda"));
  r.shared = std::stoi(get("shared"));
  r.seed = std::stoull(get("seed"));
  r.val_loss = std::stod(get("val_loss"));
  r.accuracy = std::stod(get("accuracy"));
  r.recall_accuracy = std::stod(get("recall_accuracy"));
  r.tokens = std::stoll(get("tokens"));
  r.answers = std::stoll(get("answers"));
  r.heads = std::stoi(get("heads"));
  const int layers = std::stoi(get("layers"));
  for (int l = 0; l < layers; ++l) {
    run_record::layer L;
    std::istringstream values(get("layer" + std::to_string(l)));
    values >> L.cv >> L.effective_heads >> L.dormant01 >> L.dormant02 >> L.first_key_mass >>
        L.first_key_sink_heads;
    std::istringstream imp(get("importance" + std::to_string(l)));
    for (double x; imp >> x;) L.importance.push_back(x);
    r.layers.push_back(std::move(L));
  }
  return r;
}

run_record record_of(const study_run& run, const eval_result& val) {
  run_record r;
  r.name = run.name;
  r.mech = run.config.model.mech;
  r.lambda = run.config.lambda;
  r.shared = run.config.shared_heads;
  r.seed = run.config.seed;
  r.val_loss = val.loss;
  r.accuracy = val.accuracy;
  r.recall_accuracy = val.recall_accuracy;
  r.tokens = val.tokens;
  r.answers = val.answers;
  r.heads = run.config.model.heads;
  for (std::size_t l = 0; l < val.balance.layers.size(); ++l) {
    const auto& b = val.balance.layers[l];
    r.layers.push_back({b.cv, b.effective_heads, val.dormant_below_01[l], val.dormant_below_02[l],
                        val.first_key_mass[l], val.first_key_sink_heads[l], b.importance});
  }
  return r;
}

// ---- Statistics over seeds ----

struct spread {
  double mean = 0, std = 0;  // sample std (n - 1); 0 for one value
};
spread spread_of(const std::vector<double>& x) {
  spread s;
  if (x.empty()) return s;
  s.mean = std::accumulate(x.begin(), x.end(), 0.0) / x.size();
  if (x.size() > 1) {
    double ss = 0;
    for (double v : x) ss += (v - s.mean) * (v - s.mean);
    s.std = std::sqrt(ss / (x.size() - 1));
  }
  return s;
}
std::string pm(const spread& s, int decimals, double scale = 1) {
  return fixed(s.mean * scale, decimals) + " ± " + fixed(s.std * scale, decimals);
}

/// A configuration of a study: runs that differ only in their seed.
struct config_key {
  mechanism mech;
  double lambda;
  int shared;
  bool operator<(const config_key& o) const {
    return std::tie(mech, lambda, shared) < std::tie(o.mech, o.lambda, o.shared);
  }
  [[nodiscard]] std::string label() const {
    if (lambda == 0) return "lambda = 0";
    return "lambda = " + format_real(lambda) + ", shared " + std::to_string(shared);
  }
};

/// One run's collapse curves, read from its collapse.csv: per log step, over its layers.
struct curves {
  std::vector<double> step, mean_cv, min_effective_heads, max_dormant01, mean_first_key_mass;
};
curves read_curves(const fs::path& csv) {
  curves c;
  std::ifstream in(csv);
  std::string line;
  std::getline(in, line);  // header
  std::map<int, std::vector<std::vector<double>>> by_step;
  while (std::getline(in, line)) {
    std::istringstream row(line);
    std::vector<double> v;
    for (std::string cell; std::getline(row, cell, ',');) v.push_back(std::stod(cell));
    if (v.size() >= 8) by_step[int(v[0])].push_back(v);
  }
  for (const auto& [step, layers] : by_step) {
    double cv = 0, eff = 1e300, dormant = 0, fk = 0;
    for (const auto& v : layers) {
      cv += v[2] / layers.size();
      eff = std::min(eff, v[3]);
      dormant = std::max(dormant, v[4]);
      fk += v[6] / layers.size();
    }
    c.step.push_back(step);
    c.mean_cv.push_back(cv);
    c.min_effective_heads.push_back(eff);
    c.max_dormant01.push_back(dormant);
    c.mean_first_key_mass.push_back(fk);
  }
  return c;
}

/// Mean and min..max band over seeds of one curve, on the steps every seed logged.
chart_series band_of(const std::string& name, const std::vector<curves>& runs,
                     std::vector<double> curves::*field) {
  chart_series s;
  s.name = name;
  if (runs.empty()) return s;
  std::size_t points = runs[0].step.size();
  for (const curves& c : runs) points = std::min(points, c.step.size());
  for (std::size_t i = 0; i < points; ++i) {
    std::vector<double> v;
    for (const curves& c : runs) v.push_back((c.*field)[i]);
    s.x.push_back(runs[0].step[i]);
    s.mean.push_back(spread_of(v).mean);
    s.lo.push_back(*std::min_element(v.begin(), v.end()));
    s.hi.push_back(*std::max_element(v.begin(), v.end()));
  }
  return s;
}

fs::path run_dir(const std::string& dir, const study_run& run) {
  return fs::path(dir) / "runs" / run.name;
}

}  // namespace

std::vector<study_run> plan_runs(const study_plan& plan) {
  std::vector<study_run> runs;
  for (const mechanism m : plan.mechanisms)
    for (const std::uint64_t seed : plan.seeds)
      for (const double lambda : plan.lambdas)
        for (const int shared : plan.shared_heads) {
          if (lambda == 0 && shared != plan.shared_heads.front()) continue;  // one baseline
          study_run r;
          r.config = plan.base;
          r.config.model.mech = m;
          r.config.lambda = lambda;
          r.config.shared_heads = lambda == 0 ? 0 : shared;
          r.config.seed = seed;
          r.name = std::string(name_of(m)) + "-lambda" + format_real(lambda) +
                   (lambda == 0 ? "" : "-shared" + std::to_string(shared)) + "-seed" +
                   std::to_string(seed);
          runs.push_back(std::move(r));
        }
  return runs;
}

std::string plan_text(const study_plan& plan) {
  train_config base = plan.base;  // the per-run fields are the plan's, not the base's
  base.model.mech = train_config{}.model.mech;
  base.lambda = 0;
  base.shared_heads = 0;
  base.seed = train_config{}.seed;
  std::ostringstream os;
  os << "tiny_lm study plan 1\n" << config_to_text(base) << "mechanisms=";
  for (std::size_t i = 0; i < plan.mechanisms.size(); ++i)
    os << (i ? "," : "") << name_of(plan.mechanisms[i]);
  os << "\nlambdas=";
  for (std::size_t i = 0; i < plan.lambdas.size(); ++i)
    os << (i ? "," : "") << format_real(plan.lambdas[i]);
  os << "\nshared_heads=";
  for (std::size_t i = 0; i < plan.shared_heads.size(); ++i)
    os << (i ? "," : "") << plan.shared_heads[i];
  os << "\nseeds=";
  for (std::size_t i = 0; i < plan.seeds.size(); ++i) os << (i ? "," : "") << plan.seeds[i];
  os << "\n";
  return os.str();
}

bool run_study(const study_plan& plan, const dataset& data, const study_options& opts) {
  const std::string text = plan_text(plan);
  const fs::path plan_path = fs::path(opts.dir) / "study.txt";
  if (fs::exists(plan_path)) {
    std::ifstream in(plan_path);
    const std::string stored((std::istreambuf_iterator<char>(in)),
                             std::istreambuf_iterator<char>());
    if (stored != text)
      throw usage_error("--out " + opts.dir +
                        " holds another study (its study.txt differs from these flags); use a "
                        "new folder, or the flags it was started with");
  } else {
    fs::create_directories(opts.dir);
    write_file_atomic(plan_path.string(), text);
  }
  const std::vector<study_run> runs = plan_runs(plan);
  const bool print = opts.train.print;
  int budget = opts.stop_after;  // steps left in this call (0: unlimited)
  for (std::size_t i = 0; i < runs.size(); ++i) {
    const study_run& run = runs[i];
    const fs::path dir = run_dir(opts.dir, run);
    const fs::path final_path = dir / "final.txt", ck_path = dir / "checkpoint.bin";
    checkpoint_data ck;
    int start = 0;
    if (fs::exists(ck_path)) {
      ck = load_checkpoint(ck_path.string(), "study run " + run.name);
      if (config_to_text(ck.config) != config_to_text(run.config))
        throw usage_error("study run " + run.name + ": its checkpoint holds another config");
      start = static_cast<int>(ck.step);
    }
    if (start >= run.config.steps && fs::exists(final_path)) continue;  // finished earlier
    if (start >= run.config.steps) {  // trained, but stopped before final.txt: evaluate again
      const run_summary s = evaluate_run_dir(dir.string(), opts.train.threads, opts.val_sequences);
      write_file_atomic(final_path.string(), record_text(record_of(run, s.val)));
      continue;
    }
    if (opts.stop_after > 0 && budget <= 0) return false;
    run_options o = opts.train;
    o.out_dir = dir.string();
    o.label = run.name;
    if (o.checkpoint_every == 0) o.checkpoint_every = std::max(1, run.config.steps / 10);
    if (start > 0) o.resume = &ck;
    if (opts.stop_after > 0) o.stop_after = std::min(run.config.steps, start + budget);
    if (print) {
      std::printf("study run %zu/%zu: %s%s\n", i + 1, runs.size(), run.name.c_str(),
                  start > 0 ? (" (resuming at step " + std::to_string(start) + ")").c_str() : "");
      std::fflush(stdout);
    }
    const train_result r = train(run.config, data, o);
    budget -= r.steps_done - start;
    if (!r.finished) return false;
    write_file_atomic(final_path.string(), record_text(record_of(run, r.summary.val)));
  }
  write_study_report(plan, opts.dir);
  return true;
}

void write_study_report(const study_plan& plan, const std::string& dir) {
  const std::vector<study_run> runs = plan_runs(plan);
  std::map<config_key, std::vector<run_record>> by_config;
  std::map<config_key, std::vector<curves>> curves_of;
  std::vector<run_record> records;
  for (const study_run& run : runs) {
    const fs::path path = run_dir(dir, run) / "final.txt";
    std::ifstream in(path);
    if (!in) throw usage_error("study " + dir + ": run " + run.name + " is not finished");
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    run_record r = parse_record(text, path.string());
    const config_key key{r.mech, r.lambda, r.shared};
    curves_of[key].push_back(read_curves(run_dir(dir, run) / "collapse.csv"));
    by_config[key].push_back(r);
    records.push_back(std::move(r));
  }
  const train_config& base = plan.base;
  const int heads = base.model.heads;

  // ---- CSVs ----
  std::ostringstream runs_csv, layers_csv;
  runs_csv << "run,mechanism,lambda,shared_heads,seed,val_loss,accuracy,recall_accuracy,"
              "recall_answers,mean_cv,min_effective_heads,max_dormant_below_0.1,"
              "max_dormant_below_0.2,mean_first_key_mass,collapsed\n";
  layers_csv << "run,layer,cv,effective_heads,dormant_below_0.1,dormant_below_0.2,first_key_mass,"
                "first_key_sink_heads\n";
  char row[512];
  for (const run_record& r : records) {
    std::snprintf(
        row, sizeof row, "%s,%s,%g,%d,%llu,%.6f,%.6f,%.6f,%lld,%.6f,%.4f,%.4f,%.4f,%.6f,%d\n",
        r.name.c_str(), name_of(r.mech), r.lambda, r.shared,
        static_cast<unsigned long long>(r.seed), r.val_loss, r.accuracy, r.recall_accuracy,
        r.answers, r.mean_cv(), r.min_effective_heads(), r.max_dormant(false), r.max_dormant(true),
        r.mean_first_key_mass(), r.collapsed() ? 1 : 0);
    runs_csv << row;
    for (std::size_t l = 0; l < r.layers.size(); ++l) {
      const auto& L = r.layers[l];
      std::snprintf(row, sizeof row, "%s,%zu,%.6f,%.4f,%.4f,%.4f,%.6f,%.4f\n", r.name.c_str(), l,
                    L.cv, L.effective_heads, L.dormant01, L.dormant02, L.first_key_mass,
                    L.first_key_sink_heads);
      layers_csv << row;
    }
  }
  write_file_atomic((fs::path(dir) / "study_runs.csv").string(), runs_csv.str());
  write_file_atomic((fs::path(dir) / "study_layers.csv").string(), layers_csv.str());

  // ---- Markdown ----
  std::ostringstream md;
  md << "# tiny_lm study: head collapse and sink-aware balancing\n\n"
     << describe_model(base) << ", lr " << format_real(base.lr) << "; seeds";
  for (const auto s : plan.seeds) md << ' ' << s;
  md << ".\n\nValidation metrics of the final models, mean ± sample std over seeds. Recall: "
        "accuracy on the recall answers (chance 10%), with its binomial standard error. Min "
        "eff. heads: the layer with the fewest effective heads (of "
     << heads
     << "). Dormant: share of heads with importance below 0.1 / 0.2 in the worst "
        "layer. Collapsed: the paper's definition (a dormant head in some layer, or fewer "
        "than "
     << fixed(0.75 * heads, 1) << " effective heads), in how many seeds.\n";
  for (const mechanism m : plan.mechanisms) {
    md << "\n## " << title_of(m) << "\n\n"
       << "| config | val loss | next-byte acc % | recall acc % | mean CV | min eff. heads | "
          "dormant <0.1 % | dormant <0.2 % | first-token attention | collapsed |\n"
       << "|---|---|---|---|---|---|---|---|---|---|\n";
    for (const auto& [key, rs] : by_config) {
      if (key.mech != m) continue;
      std::vector<double> loss, acc, recall, se, cv, eff, d1, d2, fk;
      int collapsed = 0;
      for (const run_record& r : rs) {
        loss.push_back(r.val_loss);
        acc.push_back(r.accuracy);
        recall.push_back(r.recall_accuracy);
        se.push_back(r.answers ? std::sqrt(r.recall_accuracy * (1 - r.recall_accuracy) / r.answers)
                               : 0.0);
        cv.push_back(r.mean_cv());
        eff.push_back(r.min_effective_heads());
        d1.push_back(r.max_dormant(false));
        d2.push_back(r.max_dormant(true));
        fk.push_back(r.mean_first_key_mass());
        collapsed += r.collapsed();
      }
      md << "| " << key.label() << " | " << pm(spread_of(loss), 4) << " | "
         << pm(spread_of(acc), 1, 100) << " | " << pm(spread_of(recall), 1, 100) << " (SE "
         << fixed(100 * spread_of(se).mean, 1) << ") | " << pm(spread_of(cv), 3) << " | "
         << pm(spread_of(eff), 2) << " | " << pm(spread_of(d1), 0, 100) << " | "
         << pm(spread_of(d2), 0, 100) << " | " << pm(spread_of(fk), 3) << " | " << collapsed
         << " of " << rs.size() << " |\n";
    }
    // Paired: each balanced configuration against lambda = 0 on the same seed.
    const auto base_it = by_config.find({m, 0.0, 0});
    if (base_it == by_config.end()) continue;
    std::map<std::uint64_t, const run_record*> base_of;
    for (const run_record& r : base_it->second) base_of[r.seed] = &r;
    md << "\nPaired with lambda = 0 on the same seed (balanced - base):\n\n"
       << "| config | seed | d val loss | d recall acc % | d mean CV | d min eff. heads |\n"
       << "|---|---|---|---|---|---|\n";
    for (const auto& [key, rs] : by_config) {
      if (key.mech != m || key.lambda == 0) continue;
      std::vector<double> dl, dr;
      int better = 0;
      for (const run_record& r : rs) {
        const auto it = base_of.find(r.seed);
        if (it == base_of.end()) continue;
        const run_record& b = *it->second;
        dl.push_back(r.val_loss - b.val_loss);
        dr.push_back(r.recall_accuracy - b.recall_accuracy);
        better += r.val_loss < b.val_loss;
        md << "| " << key.label() << " | " << r.seed << " | " << fixed(dl.back(), 4) << " | "
           << fixed(100 * dr.back(), 1) << " | " << fixed(r.mean_cv() - b.mean_cv(), 3) << " | "
           << fixed(r.min_effective_heads() - b.min_effective_heads(), 2) << " |\n";
      }
      md << "| " << key.label() << " | mean ± std | " << pm(spread_of(dl), 4) << " | "
         << pm(spread_of(dr), 1, 100) << " | | lower val loss in " << better << " of " << dl.size()
         << " seeds |\n";
    }
  }
  md << "\nCurves: `cv.svg` (mean CV over layers), `effective_heads.svg` (the layer with the "
        "fewest effective heads), `dormant.svg` (the layer with the most dormant heads), "
        "`first_token.svg` (mean attention on the first token); lines are the mean over seeds, "
        "bands the range. `heatmaps.svg`: final importance of seed "
     << plan.seeds.front()
     << ". Per run: `study_runs.csv`, `study_layers.csv`, and the run "
        "folders in `runs/` (log.csv, collapse.csv, importance.csv, val_importance.csv).\n";
  write_file_atomic((fs::path(dir) / "study.md").string(), md.str());

  // ---- Charts ----
  const auto chart = [&](std::vector<double> curves::*field, const std::string& file,
                         const std::string& title, const std::string& y_label) {
    std::vector<chart_panel> panels;
    for (const mechanism m : plan.mechanisms) {
      chart_panel panel{title_of(m), {}};
      for (const auto& [key, cs] : curves_of)
        if (key.mech == m) panel.series.push_back(band_of(key.label(), cs, field));
      panels.push_back(std::move(panel));
    }
    write_file_atomic((fs::path(dir) / file).string(),
                      line_chart_svg(panels, title,
                                     describe_model(base) + "; validation, every log step; " +
                                         std::to_string(plan.seeds.size()) + " seeds",
                                     "step", y_label));
  };
  chart(&curves::mean_cv, "cv.svg", "Importance CV over training", "mean CV over layers");
  chart(&curves::min_effective_heads, "effective_heads.svg", "Effective heads over training",
        "effective heads, fewest layer");
  chart(&curves::max_dormant01, "dormant.svg", "Dormant heads over training",
        "share of heads below 0.1, worst layer");
  chart(&curves::mean_first_key_mass, "first_token.svg", "Attention on the first token",
        "mean first-token attention");
  std::vector<heatmap_panel> panels;
  for (const auto& [key, rs] : by_config)
    for (const run_record& r : rs) {
      if (r.seed != plan.seeds.front()) continue;
      sinkmoe::balance::report rep;
      for (const auto& L : r.layers) {
        sinkmoe::balance::layer_report lr;
        lr.importance = L.importance;
        lr.cv = L.cv;
        lr.effective_heads = L.effective_heads;
        lr.dormant_fraction = L.dormant01;
        rep.layers.push_back(lr);
      }
      panels.push_back({std::string(title_of(key.mech)) + ", " + key.label(), rep});
    }
  const int columns = std::max<int>(1, static_cast<int>(panels.size() / plan.mechanisms.size()));
  write_file_atomic(
      (fs::path(dir) / "heatmaps.svg").string(),
      heatmap_svg(panels, columns, "Head importance, seed " + std::to_string(plan.seeds.front()),
                  describe_model(base)));
}

}  // namespace tiny_lm
