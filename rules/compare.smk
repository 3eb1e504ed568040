# Back-to-back comparisons: `python -m pipeline compare NAME` runs a comparison's variants one
# after the other, in alternating (ABBA) rounds, and writes results/compare/{name}.json (the
# rounds' own JSONs in results/compare/{name}/). The config's `comparisons:` block turns each
# on; the report shows every one that ran. Like the benchmarks they run alone (`machine` resource).
# The get_compare_* helpers are in rules/common.smk. The baselines comparison also reads the
# checkpoint (torch) and the GGUF files rule gguf writes from it (llama.cpp).

rule compare:
    input:
        exports=get_compare_exports,
        ggufs=get_compare_ggufs,
        checkpoint=get_compare_checkpoint,
        kernels=get_kernel_libraries(),
        engine=get_engine_sources(),
        code=["pipeline/study/compare.py", "pipeline/study/variants.py", "pipeline/study/bench.py",
              "pipeline/study/roofline.py", "pipeline/study/llamacpp.py", "pipeline/study/baseline.py",
              "pipeline/study/lowprec.py", "pipeline/study/refcache.py"],
    output:
        "results/compare/{name}.json",
    wildcard_constraints:
        name="|".join(COMPARISONS),
    params:
        options=get_compare_options,
        prompt_len=COMPARE_PROMPT_LEN,
        gen_len=config["comparisons"]["gen_len"],
        iters=config["iters"],
        warmup=config["warmup"],
        rounds=config["comparisons"]["rounds"],
        timeout=config["bench_timeout"],
    threads: get_compare_threads
    resources:
        mpi=MPI_LAUNCHER,  # a resource, as in rule bench: a launcher change alone reruns nothing
        job_threads=get_compare_threads,  # a resource, not a param: --cores alone reruns nothing
        machine=MEASUREMENT,
    log:
        "results/logs/compare/{name}.log",
    benchmark:
        "results/logs/benchmarks/compare/{name}.tsv"
    conda:
        "../envs/workflow.yaml"
    shell:
        "python -m pipeline compare {wildcards.name} --export {input.exports} {params.options}"
        " --threads {resources.job_threads} --prompt-len {params.prompt_len} --gen-len {params.gen_len}"
        " --iters {params.iters} --warmup {params.warmup} --rounds {params.rounds}"
        " --mpi {resources.mpi:q} --timeout {params.timeout} --out {output} > {log} 2>&1"


rule gguf:
    input:
        get_checkpoint_files(),
    output:
        get_gguf_file("{gguf_dtype}"),
    wildcard_constraints:
        gguf_dtype="|".join(GGUF_DTYPES),
    params:
        checkpoint=get_checkpoint_param,
    resources:
        machine=BESIDE,
    log:
        "results/logs/gguf/{gguf_dtype}.log",
    benchmark:
        "results/logs/benchmarks/gguf/{gguf_dtype}.tsv"
    conda:
        "../envs/workflow.yaml"
    shell:
        "python -m pipeline gguf --checkpoint {params.checkpoint} --dtype {wildcards.gguf_dtype}"
        " --out {output} > {log} 2>&1"
