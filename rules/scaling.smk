# Beyond the matrix: the MPI latency/bandwidth sweep, the cost model calibrated on it and on the
# single-rank cells, and the optional Hugging Face baseline. All feed the report. The two
# measurements hold the `bench` resource, so they never run beside a benchmark.


rule commbench:
    input:
        code="pipeline/study/commbench.py",
    output:
        "results/comm.json",
    params:
        timeout=get_timeout_prefix(),
    resources:
        mpi=MPI_LAUNCHER,
        tasks=2,
        bench=1,
    log:
        "results/logs/commbench.log",
    benchmark:
        "results/logs/benchmarks/commbench.tsv"
    conda:
        "../envs/workflow.yaml"
    shell:
        "{params.timeout} {resources.mpi} -n {resources.tasks}"
        " python -m mpi4py -m pipeline commbench --out {output} > {log} 2>&1"


rule costmodel:
    input:
        runs=get_run_files(),
        comm="results/comm.json",
        code="pipeline/study/costmodel.py",
    output:
        "results/costmodel.json",
    params:
        cluster=get_cluster_args(),
        ranks=config["cluster"]["predict_ranks"],
        lengths=config["cluster"]["predict_prompt_lengths"],
    log:
        "results/logs/costmodel.log",
    conda:
        "../envs/workflow.yaml"
    shell:
        "python -m pipeline costmodel --runs {input.runs} --comm {input.comm} {params.cluster}"
        " --ranks {params.ranks} --prompt-lens {params.lengths} --out {output} > {log} 2>&1"


rule baseline:
    input:
        checkpoint=get_checkpoint_files(),
        code=["pipeline/study/baseline.py", "pipeline/engine/prompts.py"],
    output:
        "results/baseline/hf_p{prompt_len}.json",
    params:
        checkpoint=get_checkpoint_param,
        gen_len=config["gen_len"],
        iters=config["iters"],
        warmup=config["warmup"],
        timeout=get_timeout_prefix(),
    threads: get_baseline_threads
    resources:
        bench=1,
    log:
        "results/logs/baseline/hf_p{prompt_len}.log",
    benchmark:
        "results/logs/benchmarks/baseline/hf_p{prompt_len}.tsv"
    conda:
        "../envs/workflow.yaml"
    shell:
        "{params.timeout} python -m pipeline baseline --checkpoint {params.checkpoint}"
        " --prompt-len {wildcards.prompt_len} --gen-len {params.gen_len} --iters {params.iters}"
        " --warmup {params.warmup} --threads {threads} --out {output} > {log} 2>&1"


rule dtype_compare:
    input:
        exports=[get_export_dir("float32"), get_export_dir("bf16")],
        kernels=get_kernel_libraries(),
        engine=get_engine_sources(),
        code=["pipeline/study/dtype_compare.py", "pipeline/study/alternate.py"],
    output:
        "results/dtype_compare.json",
    params:
        ranks=get_dtype_compare_ranks(),
        rounds=config["comparison_rounds"],
        gen_len=config["gen_len"],
        iters=config["iters"],
        warmup=config["warmup"],
        timeout=config["bench_timeout"] or 0,
    threads: get_machine_cores()
    resources:
        mpi=MPI_LAUNCHER,  # a resource, as in rule bench: a launcher change alone reruns nothing
        bench=1,
    log:
        "results/logs/dtype_compare.log",
    benchmark:
        "results/logs/benchmarks/dtype_compare.tsv"
    conda:
        "../envs/workflow.yaml"
    shell:
        "python -m pipeline.study.dtype_compare --exports {input.exports} --ranks {params.ranks}"
        " --threads {threads} --prompt-len 128 --gen-len {params.gen_len} --iters {params.iters}"
        " --warmup {params.warmup} --rounds {params.rounds} --mpi {resources.mpi:q} --timeout {params.timeout}"
        " --out {output} > {log} 2>&1"


rule rank_compare:
    input:
        export=get_export_dir(),
        kernels=get_kernel_libraries(),
        engine=get_engine_sources(),
        code=["pipeline/study/rank_compare.py", "pipeline/study/alternate.py"],
    output:
        "results/rank_compare.json",
    params:
        gen_len=config["gen_len"],
        iters=config["iters"],
        warmup=config["warmup"],
        rounds=config["comparison_rounds"],
        cores=get_rank_compare_cores(),
        timeout=config["bench_timeout"] or 0,
    threads: max(1, get_rank_compare_cores())  # Snakemake caps it at --cores; the job runs C ranks
    resources:
        mpi=MPI_LAUNCHER,
        bench=1,
    log:
        "results/logs/rank_compare.log",
    benchmark:
        "results/logs/benchmarks/rank_compare.tsv"
    conda:
        "../envs/workflow.yaml"
    shell:
        "python -m pipeline.study.rank_compare --export {input.export} --cores {params.cores}"
        " --prompt-len 128 --gen-len {params.gen_len} --iters {params.iters} --warmup {params.warmup}"
        " --rounds {params.rounds} --mpi {resources.mpi:q} --timeout {params.timeout}"
        " --out {output} > {log} 2>&1"


rule roofline_compare:
    input:
        export=get_export_dir(),
        kernels=get_kernel_libraries(),
        engine=get_engine_sources(),
        code="pipeline/study/roofline_compare.py",
    output:
        "results/roofline_compare.json",
    params:
        gen_len=config["gen_len"],
        rounds=config["comparison_rounds"],
    threads: get_machine_cores()
    resources:
        bench=1,
    log:
        "results/logs/roofline_compare.log",
    benchmark:
        "results/logs/benchmarks/roofline_compare.tsv"
    conda:
        "../envs/workflow.yaml"
    shell:
        "python -m pipeline.study.roofline_compare --export {input.export} --threads {threads}"
        " --prompt-len 128 --gen-len {params.gen_len} --rounds {params.rounds}"
        " --out {output} > {log} 2>&1"
