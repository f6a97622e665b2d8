// The training loop and evaluation (see trainer.hpp).
#include "tiny_lm/trainer.hpp"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <sstream>

#include "tiny_lm/crc32.hpp"
#include "tiny_lm/data_parallel.hpp"
#include "tiny_lm/optim.hpp"

namespace tiny_lm {

namespace fs = std::filesystem;

namespace {

constexpr const char* k_log_header =
    "step,lr,loss,ce,balance_loss,grad_norm,train_mean_cv,val_loss,val_acc,val_recall_acc,"
    "val_mean_cv,val_effective_heads,tokens_per_s";
constexpr const char* k_importance_header = "step,layer,head,importance";
/// Validation metrics of every layer at every log step: how collapse develops.
constexpr const char* k_collapse_header =
    "step,layer,cv,effective_heads,dormant_below_0.1,dormant_below_0.2,first_key_mass,"
    "first_key_sink_heads";
constexpr const char* k_val_importance_header = "step,layer,head,importance";

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

/// Keeps the header and the rows of a CSV whose step (first field) is <= max_step; creates the
/// file with its header when it does not exist. Used on resume so logs continue seamlessly.
void keep_rows_through(const std::string& path, const std::string& header, int max_step) {
  std::string kept = header + "\n";
  if (fs::exists(path)) {
    std::istringstream in(read_file(path));
    std::string line;
    std::getline(in, line);  // header
    while (std::getline(in, line)) {
      const long step = std::strtol(line.c_str(), nullptr, 10);
      if (step >= 1 && step <= max_step) kept += line + "\n";
    }
  }
  write_file_atomic(path, kept);
}

double mean_effective_heads(const sinkmoe::balance::report& rep) {
  double s = 0;
  for (const auto& l : rep.layers) s += l.effective_heads;
  return rep.layers.empty() ? 0 : s / double(rep.layers.size());
}

std::string default_label(const train_config& cfg) {
  std::ostringstream os;
  os << name_of(cfg.model.mech) << ", lambda = " << cfg.lambda;
  return os.str();
}

std::string metrics_text(const speed_summary& s) {
  std::ostringstream os;
  os.precision(17);
  os << "tokens_per_second=" << s.tokens_per_second << "\nstep_seconds=" << s.step_seconds
     << "\nattention_share=" << s.attention_share << "\nbalance_share=" << s.balance_share
     << "\nsteps=" << s.steps << "\n";
  return os.str();
}

speed_summary parse_metrics(const std::string& text) {
  speed_summary s;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    const auto eq = line.find('=');
    if (eq == std::string::npos) continue;
    const std::string key = line.substr(0, eq);
    const double value = std::strtod(line.c_str() + eq + 1, nullptr);
    if (key == "tokens_per_second") s.tokens_per_second = value;
    if (key == "step_seconds") s.step_seconds = value;
    if (key == "attention_share") s.attention_share = value;
    if (key == "balance_share") s.balance_share = value;
    if (key == "steps") s.steps = static_cast<long long>(value);
  }
  return s;
}

/// Data parallel: sums the ranks' parameter gradients and cross-entropy totals in place, so that
/// every rank holds those of the global batch. Each rank's gradient is already its share of the
/// gradient of the global mean loss (compute_gradients with the global token count, balancing
/// through distributed_cv2 with gradient_average = 1), so the sum is the 1-rank gradient.
void sum_over_ranks(data_parallel& dp, std::vector<float>& grads, ops::ce_totals& ce) {
  dp.all_reduce_sum(std::span<float>(grads));
  double totals[5] = {ce.loss_sum, double(ce.rows), double(ce.correct), double(ce.answers),
                      double(ce.answers_correct)};
  dp.all_reduce_sum(std::span<double>(totals));
  ce.loss_sum = totals[0];
  ce.rows = static_cast<std::int64_t>(totals[1]);
  ce.correct = static_cast<std::int64_t>(totals[2]);
  ce.answers = static_cast<std::int64_t>(totals[3]);
  ce.answers_correct = static_cast<std::int64_t>(totals[4]);
}

std::uint32_t params_crc(const std::vector<float>& params) {
  return crc32(params.data(), params.size() * sizeof(float));
}

}  // namespace

void validate_config(const train_config& c) {
  const model_config& m = c.model;
  const auto fail = [](const std::string& s) { throw usage_error(s); };
  if (m.layers < 1) fail("--layers " + std::to_string(m.layers) + ": must be >= 1");
  if (m.heads < 1) fail("--heads " + std::to_string(m.heads) + ": must be >= 1");
  if (m.width < 1) fail("--width " + std::to_string(m.width) + ": must be >= 1");
  if (m.width % m.heads != 0)
    fail("--heads " + std::to_string(m.heads) + " does not divide --width " +
         std::to_string(m.width));
  if (m.seq < 2) fail("--seq " + std::to_string(m.seq) + ": must be >= 2 (BOS and one byte)");
  if (m.window < 0) fail("--window " + std::to_string(m.window) + ": must be >= 0 (0 = off)");
  if (c.batch < 1) fail("--batch " + std::to_string(c.batch) + ": must be >= 1");
  if (c.steps < 1) fail("--steps " + std::to_string(c.steps) + ": must be >= 1");
  if (c.warmup < 0) fail("--warmup " + std::to_string(c.warmup) + ": must be >= 0");
  if (!(c.lr > 0) || !std::isfinite(c.lr)) fail("--lr " + fixed(c.lr, 6) + ": must be > 0");
  if (!(c.lambda >= 0) || !std::isfinite(c.lambda))
    fail("--lambda " + fixed(c.lambda, 6) + ": must be >= 0");
  if (c.shared_heads < 0 || c.shared_heads >= m.heads)
    fail("--shared-heads " + std::to_string(c.shared_heads) + ": must be in [0, --heads " +
         std::to_string(m.heads) + ")");
}

sinkmoe::balance::importance_cv2 regulariser(const train_config& cfg) {
  return sinkmoe::balance::importance_cv2{.lambda = cfg.lambda, .shared_heads = cfg.shared_heads};
}

double cv2_sum(const sinkmoe::balance::report& rep) {
  double s = 0;
  for (const auto& l : rep.layers) {
    const double n = double(l.importance.size() - l.shared.size());
    s += n * l.balanced_cv * l.balanced_cv;
  }
  return s;
}

dataset load_dataset(const train_config& cfg, int val_sequences) {
  return cfg.data_path.empty() ? dataset::builtin(cfg.model.seq, val_sequences)
                               : dataset::from_file(cfg.data_path, cfg.model.seq, val_sequences);
}

eval_result evaluate(transformer<float>& model, const dataset& data, int batch, int max_sequences,
                     const sinkmoe::balance::importance_cv2& reg) {
  const int total = max_sequences > 0 ? std::min(max_sequences, data.validation_sequences())
                                      : data.validation_sequences();
  ops::ce_totals ce;
  sinkmoe::balance::importance_sums sums, first_key;
  const auto add_to = [](sinkmoe::balance::importance_sums& total,
                         const sinkmoe::balance::importance_sums& part) {
    if (total.router_sum.empty()) {
      total = part;
      return;
    }
    for (std::size_t i = 0; i < total.router_sum.size(); ++i)
      total.router_sum[i] += part.router_sum[i];
    for (std::size_t i = 0; i < total.token_count.size(); ++i)
      total.token_count[i] += part.token_count[i];
  };
  sample_batch sb;
  for (int first = 0; first < total; first += batch) {
    data.validation_batch(first, std::min(batch, total - first), sb);
    const ops::ce_totals c = model.forward(sb, false);
    ce.loss_sum += c.loss_sum;
    ce.rows += c.rows;
    ce.correct += c.correct;
    ce.answers += c.answers;
    ce.answers_correct += c.answers_correct;
    const auto inputs = model.balance_inputs();
    add_to(sums, sinkmoe::balance::accumulate<float>(model.exec(), std::span(inputs)));
    const auto first_key_inputs = model.first_key_inputs();
    add_to(first_key,
           sinkmoe::balance::accumulate<float>(model.exec(), std::span(first_key_inputs)));
  }
  eval_result r;
  r.tokens = ce.rows;
  r.answers = ce.answers;
  r.loss = ce.rows ? ce.loss_sum / double(ce.rows) : 0;
  r.accuracy = ce.rows ? double(ce.correct) / double(ce.rows) : 0;
  r.recall_accuracy = ce.answers ? double(ce.answers_correct) / double(ce.answers) : 0;
  r.balance = reg.evaluate(sums);
  const auto metrics = sinkmoe::balance::head_metrics(sums, {0.1, 0.2});
  // Mean first-token attention per head, from the same sums machinery as the importance.
  const auto first_metrics = sinkmoe::balance::head_metrics(first_key, {});
  for (std::size_t l = 0; l < metrics.layers.size(); ++l) {
    r.dormant_below_01.push_back(metrics.layers[l].dormant_fraction[0]);
    r.dormant_below_02.push_back(metrics.layers[l].dormant_fraction[1]);
    const std::vector<double>& fk = first_metrics.layers[l].importance;
    r.first_key_mass.push_back(fk.empty() ? 0.0
                                          : std::accumulate(fk.begin(), fk.end(), 0.0) / fk.size());
    const auto sinks = std::count_if(fk.begin(), fk.end(), [](double m) { return m > 0.3; });
    r.first_key_sink_heads.push_back(fk.empty() ? 0.0 : double(sinks) / fk.size());
  }
  return r;
}

std::vector<stored_tensor> tensor_table(const transformer<float>& model) {
  std::vector<stored_tensor> table;
  for (const param_tensor& t : model.tensors()) table.push_back({t.name, t.rows, t.cols});
  return table;
}

train_result train(const train_config& cfg, const dataset& data, const run_options& opts) {
  data_parallel* const dp = opts.parallel;
  const bool writer = dp == nullptr || dp->rank() == 0;  // data parallel: rank 0 alone writes
  const bool print = opts.print && writer;
  // ---- Checks and state, before anything is written ----
  // Data parallel: checks that may fail on some ranks only end in one collective, so that every
  // rank stops (on_every_rank); checks of agreed values fail on every rank alike.
  on_every_rank(dp, [&] { validate_config(cfg); });
  if (dp && cfg.batch < dp->ranks())
    fail_on_every_rank(dp, true,
                       "--batch " + std::to_string(cfg.batch) + ": data parallel over " +
                           std::to_string(dp->ranks()) +
                           " ranks needs at least one sequence per rank (--batch >= " +
                           std::to_string(dp->ranks()) + ")");
  transformer<float> model(cfg.model, opts.device, opts.threads);
  adamw_state<float> adam;
  adam.reset(model.parameter_count());
  rng data_rng(cfg.seed, "data");
  int start = 0;
  on_every_rank(dp, [&] {
    if (opts.resume) {
      const checkpoint_data& ck = *opts.resume;
      const auto want = config_fields(cfg), have = config_fields(ck.config);
      for (const auto& [key, value] : want)
        if (have.at(key) != value)
          throw usage_error("--resume: the checkpoint was written with " + key + " = " +
                            have.at(key) + ", this run has " + key + " = " + value);
      if (!cfg.data_path.empty() && (ck.data_size != data.size() || ck.data_crc != data.crc()))
        throw usage_error("--data " + cfg.data_path +
                          ": the file differs from the one the checkpoint was trained on (size or "
                          "CRC-32 changed)");
      if (ck.tensors != tensor_table(model))
        throw usage_error("--resume: the checkpoint's parameter tensors do not match this model");
      if (opts.stop_after > 0 && opts.stop_after <= ck.step)
        throw usage_error("--stop-after " + std::to_string(opts.stop_after) +
                          ": the checkpoint is already at step " + std::to_string(ck.step));
      model.params = ck.params;
      adam.m = ck.adam_m;
      adam.v = ck.adam_v;
      adam.step = ck.step;
      data_rng.set_state(ck.data_rng);
      start = static_cast<int>(ck.step);
    } else {
      model.init(cfg.seed);
    }
  });
  const auto reg = regulariser(cfg);
  const std::string label = opts.label.empty() ? default_label(cfg) : opts.label;
  const int end = opts.stop_after > 0 ? std::min(opts.stop_after, cfg.steps) : cfg.steps;
  const int log_every = opts.log_every > 0 ? opts.log_every : std::max(1, cfg.steps / 10);
  if (dp) {
    // Everything that fixes the numbers or the sequence of collectives must agree.
    const std::string run = config_to_text(cfg) + "data=" + std::to_string(data.size()) + "/" +
                            std::to_string(data.crc()) + "/" + data.describe() +
                            "\nsteps=" + std::to_string(start) + ".." + std::to_string(end) +
                            "\nlog_every=" + std::to_string(log_every) + "\n";
    if (!dp->same_on_all_ranks(crc32(run.data(), run.size())))
      fail_on_every_rank(dp, true,
                         "--data-parallel: the ranks were started with different settings (flags, "
                         "data or checkpoint); start every rank with the same command");
    if (!dp->same_on_all_ranks(params_crc(model.params)))
      fail_on_every_rank(dp, true,
                         "--data-parallel: the ranks start from different parameters (a different "
                         "--resume checkpoint?)");
  }
  // The balancing loss: of this process's batch, or of the global batch over the ranks.
  const step_balancer<float> balancer =
      dp ? dp->balancer(reg, cfg.model.layers, cfg.model.heads) : step_balancer<float>::local(reg);
  const row_range rows =
      dp ? batch_slice(cfg.batch, dp->rank(), dp->ranks()) : row_range{0, cfg.batch};
  const std::int64_t batch_tokens = std::int64_t(cfg.batch) * cfg.model.seq;

  // ---- Outputs ----
  const fs::path dir(opts.out_dir);
  const std::string log_path = (dir / "log.csv").string();
  const std::string imp_path = (dir / "importance.csv").string();
  const std::string collapse_path = (dir / "collapse.csv").string();
  const std::string val_imp_path = (dir / "val_importance.csv").string();
  std::ofstream log_csv, imp_csv, collapse_csv, val_imp_csv;
  if (writer) {
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) throw std::runtime_error("cannot create " + dir.string() + ": " + ec.message());
    write_file_atomic((dir / "config.txt").string(), config_to_text(cfg));
    keep_rows_through(log_path, k_log_header, start);
    keep_rows_through(imp_path, k_importance_header, start);
    keep_rows_through(collapse_path, k_collapse_header, start);
    keep_rows_through(val_imp_path, k_val_importance_header, start);
    log_csv.open(log_path, std::ios::app);
    imp_csv.open(imp_path, std::ios::app);
    collapse_csv.open(collapse_path, std::ios::app);
    val_imp_csv.open(val_imp_path, std::ios::app);
  }

  const auto save = [&](int step) {
    if (!writer) return;
    checkpoint_data ck;
    ck.config = cfg;
    ck.step = step;
    ck.data_rng = data_rng.state();
    ck.data_size = cfg.data_path.empty() ? 0 : data.size();
    ck.data_crc = cfg.data_path.empty() ? 0 : data.crc();
    ck.tensors = tensor_table(model);
    ck.params = model.params;
    ck.adam_m = adam.m;
    ck.adam_v = adam.v;
    save_checkpoint((dir / "checkpoint.bin").string(), ck);
  };

  progress_bar own_bar(print && opts.progress == nullptr && !opts.plain_log &&
                       ::isatty(STDOUT_FILENO));
  progress_bar& bar = opts.progress ? *opts.progress : own_bar;
  if (!opts.progress) bar.start(end - start, "steps");
  const auto say = [&](const std::string& line) {
    if (print) bar.print_line(line);
  };
  if (print && !opts.progress)
    say("tiny_lm train: " + label + "; " + describe_shape(cfg) + "; " +
        std::to_string(model.parameter_count()) + " parameters; data: " + data.describe() +
        (dp ? "; data parallel over " + std::to_string(dp->ranks()) +
                  (dp->ranks() == 1 ? " rank (" : " ranks (") +
                  std::to_string(cfg.batch / dp->ranks()) +
                  (cfg.batch % dp->ranks() ? "-" + std::to_string(cfg.batch / dp->ranks() + 1)
                                           : std::string()) +
                  " sequences each)"
            : "") +
        (start > 0 ? "; resuming at step " + std::to_string(start) : ""));

  // ---- The loop ----
  train_result result;
  result.start_step = start;
  step_timers timers;
  sample_batch batch, slice;
  long long tokens = 0;
  for (int step = start; step < end; ++step) {
    const auto t0 = steady::now();
    data.sample_train(data_rng, cfg.batch, batch);  // the global batch, on every rank
    if (dp) batch.copy_rows(rows.begin, rows.end, slice);
    step_result sr = compute_gradients(model, dp ? slice : batch, balancer, &timers, batch_tokens);
    if (dp) sum_over_ranks(*dp, model.grads, sr.ce);
    const double grad_norm = clip_gradients(model.grads, cfg.clip);
    const double lr = learning_rate(cfg, step);
    adamw_update(model.params, model.grads, adam, model.tensors(), lr, cfg, opts.threads);
    timers.total += seconds_since(t0);
    tokens += batch_tokens;
    const int done = step + 1;
    result.train_loss.push_back(sr.ce_loss());
    result.train_cv.push_back(sr.balance.mean_cv);
    for (std::size_t l = 0; writer && l < sr.balance.layers.size(); ++l)
      for (std::size_t h = 0; h < sr.balance.layers[l].importance.size(); ++h) {
        char row[96];
        std::snprintf(row, sizeof row, "%d,%zu,%zu,%.6f\n", done, l, h,
                      sr.balance.layers[l].importance[h]);
        imp_csv << row;
      }
    if (!std::isfinite(sr.total_loss()))  // the global loss: every rank stops here
      fail_on_every_rank(dp, false,
                         "training diverged at step " + std::to_string(done) +
                             " (loss is not finite); try a lower --lr");

    bar.update(
        opts.progress_offset + (done - start),
        label + " | loss " + fixed(sr.total_loss(), 3) + " | CV " + fixed(sr.balance.mean_cv, 3));
    // Log steps are fixed by the run, not by where this call stops (a stopped and resumed
    // run logs the same steps as one that was not).
    if (done % log_every == 0 || done == cfg.steps) {
      // Data parallel: the ranks must hold identical parameters (same reduced gradient, same
      // AdamW step); a cheap check of that, every log step.
      if (dp && !dp->same_on_all_ranks(params_crc(model.params)))
        fail_on_every_rank(dp, false,
                           "data parallel: the ranks' parameters differ after step " +
                               std::to_string(done) + " (they must stay identical)");
      // Every rank evaluates the same model on the same sequences (same numbers, no messages).
      const eval_result ev = evaluate(model, data, cfg.batch, opts.eval_sequences, reg);
      const double tps = timers.total > 0 ? double(tokens) / timers.total : 0;
      char row[512];
      std::snprintf(row, sizeof row,
                    "%d,%.6g,%.6f,%.6f,%.6g,%.6g,%.6f,%.6f,%.6f,%.6f,%.6f,%.4f,%.1f\n", done, lr,
                    sr.total_loss(), sr.ce_loss(), sr.balance.loss, grad_norm, sr.balance.mean_cv,
                    ev.loss, ev.accuracy, ev.recall_accuracy, ev.balance.mean_cv,
                    mean_effective_heads(ev.balance), tps);
      if (writer) {
        log_csv << row;
        for (std::size_t l = 0; l < ev.balance.layers.size(); ++l) {
          const auto& layer = ev.balance.layers[l];
          std::snprintf(row, sizeof row, "%d,%zu,%.6f,%.6f,%.6f,%.6f,%.6f,%.6f\n", done, l,
                        layer.cv, layer.effective_heads, ev.dormant_below_01[l],
                        ev.dormant_below_02[l], ev.first_key_mass[l], ev.first_key_sink_heads[l]);
          collapse_csv << row;
          for (std::size_t h = 0; h < layer.importance.size(); ++h) {
            std::snprintf(row, sizeof row, "%d,%zu,%zu,%.6f\n", done, l, h, layer.importance[h]);
            val_imp_csv << row;
          }
        }
        log_csv.flush();
        imp_csv.flush();
        collapse_csv.flush();
        val_imp_csv.flush();
      }
      std::ostringstream line;
      line << "[" << label << "] step " << done << "/" << cfg.steps << "  loss "
           << fixed(sr.total_loss(), 3) << " (bal " << fixed(sr.balance.loss, 4) << ")  val "
           << fixed(ev.loss, 3) << "  acc " << fixed(100 * ev.accuracy, 1) << "%";
      if (ev.answers) line << "  recall " << fixed(100 * ev.recall_accuracy, 1) << "%";
      line << "  CV " << fixed(ev.balance.mean_cv, 3) << "  eff heads "
           << fixed(mean_effective_heads(ev.balance), 2) << "/" << cfg.model.heads << "  lr " <<
          [&] {
            char b[16];
            std::snprintf(b, sizeof b, "%.2e", lr);
            return std::string(b);
          }()
           << "  " << fixed(tps / 1000, 1) << "k tok/s";
      say(line.str());
    }
    if (opts.checkpoint_every > 0 && done % opts.checkpoint_every == 0 && done < end) save(done);
  }
  if (writer) {
    imp_csv.flush();
    log_csv.flush();
  }
  if (!opts.progress) bar.finish();

  result.steps_done = end;
  result.finished = end == cfg.steps;
  result.params = model.params;
  save(end);
  speed_summary speed;
  speed.steps = end - start;
  if (timers.total > 0) {
    speed.tokens_per_second = double(tokens) / timers.total;
    speed.step_seconds = timers.total / double(end - start);
    speed.attention_share = timers.attention / timers.total;
    speed.balance_share = timers.balance / timers.total;
  }
  result.summary.label = label;
  result.summary.dir = dir.string();
  result.summary.config = cfg;
  result.summary.speed = speed;
  if (!result.finished) {
    say("stopped after step " + std::to_string(end) + " of " + std::to_string(cfg.steps) +
        "; continue with: tiny_lm train --resume " + (dir / "checkpoint.bin").string() + " --out " +
        dir.string());
    return result;
  }

  // ---- Final evaluation and reports ----
  result.summary.val = evaluate(model, data, cfg.batch, 0, reg);
  if (!writer) return result;
  write_file_atomic((dir / "metrics.txt").string(), metrics_text(speed));
  write_file_atomic((dir / "summary.md").string(), run_markdown(result.summary));
  write_file_atomic((dir / "heatmap.svg").string(),
                    heatmap_svg({{label, result.summary.val.balance}}, 1,
                                "tiny_lm head importance: " + label, describe_shape(cfg)));
  if (print && !opts.progress) {
    const eval_result& v = result.summary.val;
    std::ostringstream os;
    os << "\nFinal validation (" << v.tokens << " tokens): loss " << fixed(v.loss, 4)
       << "  next-byte acc " << fixed(100 * v.accuracy, 1) << "%";
    if (v.answers) os << "  recall acc " << fixed(100 * v.recall_accuracy, 1) << "%";
    os << "  mean CV " << fixed(v.balance.mean_cv, 3)
       << "\n\nHead importance (mean G over validation tokens):\n"
       << terminal_heatmap(v.balance, opts.color)
       << "\nSpeed: " << fixed(speed.tokens_per_second, 0) << " tokens/s ("
       << fixed(1000 * speed.step_seconds, 1) << " ms/step); step time: attention "
       << fixed(100 * speed.attention_share, 1) << "%, balancing "
       << fixed(100 * speed.balance_share, 2) << "%, rest "
       << fixed(100 * (1 - speed.attention_share - speed.balance_share), 1) << "%\n"
       << "Wrote " << (dir / "summary.md").string() << ", " << (dir / "heatmap.svg").string()
       << ", " << imp_path << ", " << log_path << ", " << (dir / "checkpoint.bin").string() << "\n";
    std::fputs(os.str().c_str(), stdout);
    std::fflush(stdout);
  }
  return result;
}

run_summary evaluate_run_dir(const std::string& dir, int threads, int val_sequences) {
  const std::string ckpt_path = (fs::path(dir) / "checkpoint.bin").string();
  if (!fs::exists(ckpt_path))
    throw usage_error("report " + dir + ": no checkpoint.bin there (not a tiny_lm run directory)");
  const checkpoint_data ck = load_checkpoint(ckpt_path, "report");
  validate_config(ck.config);
  const dataset data = load_dataset(ck.config, val_sequences);
  if (!ck.config.data_path.empty() && (ck.data_size != data.size() || ck.data_crc != data.crc()))
    throw usage_error("report " + dir + ": the data file " + ck.config.data_path +
                      " differs from the one the run was trained on");
  transformer<float> model(ck.config.model, device_kind::cpu, threads);
  if (ck.tensors != tensor_table(model))
    throw usage_error("report " + ckpt_path + ": parameter tensors do not match the config");
  model.params = ck.params;
  run_summary s;
  s.dir = dir;
  s.config = ck.config;
  s.label = default_label(ck.config);
  if (ck.step != ck.config.steps) s.label += " (step " + std::to_string(ck.step) + ")";
  s.val = evaluate(model, data, ck.config.batch, 0, regulariser(ck.config));
  const std::string metrics_path = (fs::path(dir) / "metrics.txt").string();
  if (fs::exists(metrics_path)) s.speed = parse_metrics(read_file(metrics_path));
  return s;
}

}  // namespace tiny_lm
