#pragma once
// Progress on long work: on a terminal, one bar redrawn in place with rate and ETA, log lines
// printed above it; otherwise (a pipe, a CI log) no bar at all, only the log lines.

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace tiny_lm {

class progress_bar {
 public:
  /// `enabled`: draw the bar (pass whether stdout is a terminal).
  explicit progress_bar(bool enabled) : enabled_(enabled) {}
  progress_bar(const progress_bar&) = delete;
  progress_bar& operator=(const progress_bar&) = delete;
  ~progress_bar() { finish(); }

  /// Starts a bar over `total` units (steps) named `unit`.
  void start(std::int64_t total, std::string unit) {
    total_ = total;
    unit_ = std::move(unit);
    start_ = clock::now();
    last_draw_ = {};
    done_ = 0;
    active_ = true;
  }

  /// Sets the units done and a status text; redraws at most ten times a second.
  void update(std::int64_t done, const std::string& status) {
    done_ = done;
    status_ = status;
    if (!enabled_ || !active_) return;
    const auto now = clock::now();
    if (done < total_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
    last_draw_ = now;
    draw();
  }

  /// Prints a full line; on a terminal the bar is cleared first and redrawn below it.
  void print_line(const std::string& line) {
    if (enabled_ && active_) std::fputs("\r\033[K", stdout);
    std::fputs(line.c_str(), stdout);
    std::fputc('\n', stdout);
    if (enabled_ && active_) draw();
    std::fflush(stdout);
  }

  /// Ends the bar (leaves the last state on screen).
  void finish() {
    if (enabled_ && active_) {
      draw();
      std::fputc('\n', stdout);
      std::fflush(stdout);
    }
    active_ = false;
  }

  [[nodiscard]] bool enabled() const { return enabled_; }

 private:
  using clock = std::chrono::steady_clock;

  static std::string clock_text(double seconds) {
    if (!(seconds >= 0) || seconds > 359999) return "--:--";
    const long s = static_cast<long>(seconds + 0.5);
    char buf[32];
    if (s >= 3600)
      std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
    else
      std::snprintf(buf, sizeof buf, "%ld:%02ld", s / 60, s % 60);
    return buf;
  }

  void draw() {
    constexpr int width = 24;
    const double fraction = total_ > 0 ? double(done_) / double(total_) : 1.0;
    const double elapsed = std::chrono::duration<double>(clock::now() - start_).count();
    const double rate = elapsed > 0 ? double(done_) / elapsed : 0.0;
    const double eta = rate > 0 ? double(total_ - done_) / rate : -1.0;
    std::string bar;
    const int filled = static_cast<int>(fraction * width * 8);
    static const char* partial[] = {"", "▏", "▎", "▍", "▌", "▋", "▊", "▉"};
    for (int i = 0; i < width; ++i) {
      const int cell = filled - i * 8;
      bar += cell >= 8 ? "█" : cell > 0 ? partial[cell] : " ";
    }
    char line[256];
    std::snprintf(line, sizeof line, "\r\033[K[%s] %3.0f%% %lld/%lld %s | %.1f %s/s | ETA %s | ",
                  bar.c_str(), 100.0 * fraction, static_cast<long long>(done_),
                  static_cast<long long>(total_), unit_.c_str(), rate, unit_.c_str(),
                  clock_text(eta).c_str());
    std::fputs(line, stdout);
    std::fputs(status_.c_str(), stdout);
    std::fflush(stdout);
  }

  bool enabled_;
  bool active_ = false;
  std::int64_t total_ = 0, done_ = 0;
  std::string unit_, status_;
  clock::time_point start_{}, last_draw_{};
};

}  // namespace tiny_lm
