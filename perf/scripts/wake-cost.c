/*
 * What waking a sleeping thread costs on this machine: two threads pass one byte back and
 * forth over pipes N times, with GAP_US microseconds of sleep between round trips (0: back to
 * back, both threads busy; 1000: the CPUs go idle between), optionally both pinned to CPU 0.
 * Prints wall time and this process's CPU time per round trip (two wakes). Used for
 * docs/BENCHMARKS.md "Pipeline v2, thirteenth step".
 *
 *   cc -O2 -pthread perf/scripts/wake-cost.c -o /tmp/wake-cost
 *   /tmp/wake-cost 20000 0; /tmp/wake-cost 5000 1000; /tmp/wake-cost 20000 0 pin
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static int to_peer[2], from_peer[2];
static int rounds;

static void *peer(void *unused) {
    char byte;
    (void)unused;
    for (int i = 0; i < rounds; i++) {
        if (read(to_peer[0], &byte, 1) != 1 || write(from_peer[1], &byte, 1) != 1) {
            perror("peer");
            exit(1);
        }
    }
    return NULL;
}

static double cpu_seconds(void) {
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    return usage.ru_utime.tv_sec + usage.ru_stime.tv_sec +
           (usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s ROUNDS GAP_US [pin]\n", argv[0]);
        return 2;
    }
    rounds = atoi(argv[1]);
    int gap_us = atoi(argv[2]);
    int pin = argc > 3;
    pthread_t thread;
    if (pipe(to_peer) || pipe(from_peer) || pthread_create(&thread, NULL, peer, NULL)) {
        perror("setup");
        return 1;
    }
    if (pin) {
        cpu_set_t cpus;
        CPU_ZERO(&cpus);
        CPU_SET(0, &cpus);
        sched_setaffinity(0, sizeof cpus, &cpus);
        pthread_setaffinity_np(thread, sizeof cpus, &cpus);
    }
    struct timespec start, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    double cpu_start = cpu_seconds();
    char byte = 'x';
    for (int i = 0; i < rounds; i++) {
        if (write(to_peer[1], &byte, 1) != 1 || read(from_peer[0], &byte, 1) != 1) {
            perror("main");
            return 1;
        }
        if (gap_us)
            usleep(gap_us);
    }
    double cpu = cpu_seconds() - cpu_start;
    clock_gettime(CLOCK_MONOTONIC, &end);
    pthread_join(thread, NULL);
    double wall = (end.tv_sec - start.tv_sec) + (end.tv_nsec - start.tv_nsec) / 1e9;
    printf("%d round trips, %d us apart%s: wall %.1f us, CPU %.1f us per round trip (gap excluded from wall)\n",
           rounds, gap_us, pin ? ", pinned to CPU 0" : "", wall / rounds * 1e6 - gap_us, cpu / rounds * 1e6);
    return 0;
}
