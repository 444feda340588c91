/* Logging with levels to stderr, and a progress bar that draws in place on a TTY and prints plain,
 * rate-limited lines otherwise (logs, CI). */
#ifndef FEDMM_LOG_H
#define FEDMM_LOG_H

#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum fm_log_level { FM_LOG_DEBUG = 0, FM_LOG_INFO, FM_LOG_WARN, FM_LOG_ERROR, FM_LOG_OFF } fm_log_level;

void fm_log_set_level(fm_log_level level);
fm_log_level fm_log_get_level(void);
/* Parses "debug", "info", "warn", "error", "off"; returns -1 for anything else. */
int fm_log_level_parse(const char *name);
/* Redirects log output (default stderr). Not thread-safe against concurrent logging. */
void fm_log_set_stream(FILE *stream);

void fm_log(fm_log_level level, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

#define FM_DEBUG(...) fm_log(FM_LOG_DEBUG, __VA_ARGS__)
#define FM_INFO(...) fm_log(FM_LOG_INFO, __VA_ARGS__)
#define FM_WARN(...) fm_log(FM_LOG_WARN, __VA_ARGS__)
#define FM_ERROR(...) fm_log(FM_LOG_ERROR, __VA_ARGS__)

typedef struct fm_progress {
    FILE *stream;
    char label[48];
    int64_t total;
    int64_t done;
    int tty; /* draw in place with \r */
    double start_s;
    double last_print_s;
    double min_interval_s; /* plain mode: at most one line per interval (default 5 s) */
    char suffix[160];      /* text after the bar, e.g. "loss 1.234" */
    int64_t printed_done;  /* `done` at the last printed line (plain mode prints each state once) */
} fm_progress;

/* Starts a bar of `total` steps on `stream` (NULL = stderr); TTY detection by isatty(). */
void fm_progress_begin(fm_progress *p, FILE *stream, const char *label, int64_t total);
/* Sets `done` and the suffix (printf-style; NULL keeps the old one), redrawing when due. */
void fm_progress_update(fm_progress *p, int64_t done, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
/* Final line (always printed). */
void fm_progress_end(fm_progress *p);

/* Seconds from a monotonic clock. */
double fm_now_seconds(void);

#ifdef __cplusplus
}
#endif
#endif
